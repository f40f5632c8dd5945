//! The migration from format 1 to format 2 interrupted at every point (issue 17), and damaged
//! tombstones.
//!
//! Why building the states by hand is the same as killing the room there: `kill -9` stops the
//! process between two system calls, and each system call of the migration (mkdir, creating
//! and writing a temporary file, rename, unlink; the fsyncs only order them on the disk) has
//! either happened completely or not at all. The states a kill can leave are therefore exactly
//! the prefixes of the migration's sequence of file-system changes, which `migrate_1_to_2`
//! lists: (1) mkdir `tombstones/`; (2) for each tombstone, create `.<fp>.json.tmp-<n>`, fill
//! it, rename it to `<fp>.json`; (3) unlink `tombstones.json`; (4) create `.FORMAT.tmp-<n>`,
//! fill it, rename it to `FORMAT`. Each test case below writes one such prefix with the same
//! bytes the migration writes (a temporary file holds any prefix of its content, here a
//! truncated one), plus the `.tombstones.json.tmp-<n>` a format-1 room killed while ending an
//! agreement leaves. Every case must open into the same files as an uninterrupted migration.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::*;
use crate::room::{Room, lock};

fn fp(n: u8) -> String {
    Fingerprint::from_bytes([n; 32]).to_string()
}

fn tombstone(n: u8, reason: EndReason) -> Tombstone {
    Tombstone {
        agreement_id: format!("agreement-{n}"),
        version: u64::from(n),
        reason,
        at: format!("2026-0{n}-01T12:00:00+00:00"),
        party_keys: vec![format!("ed25519:key-{n}")],
    }
}

/// Three tombstones, as format 1 held them.
fn format_1_tombstones() -> Tombstones {
    [
        (fp(1), tombstone(1, EndReason::Revoked)),
        (fp(2), tombstone(2, EndReason::Expired)),
        (fp(3), tombstone(3, EndReason::Superseded)),
    ]
    .into_iter()
    .collect()
}

/// A format-1 data directory holding only tombstones (the migration touches nothing else).
fn format_1_dir(root: &Path, name: &str) -> PathBuf {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("FORMAT"), "accord-room-data 1\n").unwrap();
    let all = format_1_tombstones();
    std::fs::write(
        dir.join(FORMAT_1_TOMBSTONES),
        serde_json::to_vec_pretty(&all).unwrap(),
    )
    .unwrap();
    dir
}

/// Every file under `dir` but the room key (each room makes its own), by relative path (the
/// content as text: every file here is text, and a failure then reads).
fn files(dir: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.file_name().is_some_and(|n| n != "room.key") {
                let rel = p.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
                out.insert(
                    rel,
                    String::from_utf8_lossy(&std::fs::read(&p).unwrap()).into(),
                );
            }
        }
    }
    out
}

fn registry_tombstones(room: &Room) -> Tombstones {
    lock(&room.inner.registry).tombstones.clone()
}

fn write_tombstone_file(dir: &Path, n: u8) {
    let all = format_1_tombstones();
    std::fs::write(
        dir.join(TOMBSTONES_DIR).join(format!("{}.json", fp(n))),
        encode(&all[&fp(n)]).unwrap(),
    )
    .unwrap();
}

#[test]
fn a_migration_killed_at_any_step_is_finished_at_the_next_start() {
    let root = tempfile::tempdir().unwrap();
    // Uninterrupted: what every interrupted run must end as.
    let clean = format_1_dir(root.path(), "clean");
    let room = Room::open(&clean).unwrap();
    assert_eq!(registry_tombstones(&room), format_1_tombstones());
    drop(room);
    let expected = files(&clean);
    assert_eq!(
        expected.keys().collect::<Vec<_>>(),
        [
            "FORMAT".to_owned(),
            format!("tombstones/{}.json", fp(1)),
            format!("tombstones/{}.json", fp(2)),
            format!("tombstones/{}.json", fp(3)),
        ]
        .iter()
        .collect::<Vec<_>>()
    );
    assert_eq!(expected["FORMAT"], "accord-room-data 2\n");
    let one: Tombstone =
        serde_json::from_str(&expected[&format!("tombstones/{}.json", fp(1))]).unwrap();
    assert_eq!(one, tombstone(1, EndReason::Revoked));

    let tmp = |name: &str| format!(".{name}.tmp-00001a2b00000007");
    // Each state a kill can leave, built from a format-1 directory.
    type Step = fn(&Path, &dyn Fn(&str) -> String);
    let states: [(&str, Step); 9] = [
        ("killed before the migration started", |_, _| {}),
        (
            "a format-1 room killed while rewriting tombstones.json (before its rename)",
            |d, tmp| {
                std::fs::write(d.join(tmp(FORMAT_1_TOMBSTONES)), b"{\n  \"0101").unwrap();
            },
        ),
        ("killed after creating tombstones/", |d, _| {
            std::fs::create_dir(d.join(TOMBSTONES_DIR)).unwrap();
        }),
        (
            "killed while writing the first tombstone file (before its rename)",
            |d, tmp| {
                std::fs::create_dir(d.join(TOMBSTONES_DIR)).unwrap();
                let name = tmp(&format!("{}.json", fp(1)));
                std::fs::write(d.join(TOMBSTONES_DIR).join(name), b"{\n  \"agr").unwrap();
            },
        ),
        ("killed after the first tombstone file", |d, _| {
            std::fs::create_dir(d.join(TOMBSTONES_DIR)).unwrap();
            write_tombstone_file(d, 1);
        }),
        (
            "killed while writing the second tombstone file (before its rename)",
            |d, tmp| {
                std::fs::create_dir(d.join(TOMBSTONES_DIR)).unwrap();
                write_tombstone_file(d, 1);
                let name = tmp(&format!("{}.json", fp(2)));
                std::fs::write(d.join(TOMBSTONES_DIR).join(name), b"").unwrap();
            },
        ),
        (
            "killed after every tombstone file, before writing FORMAT",
            |d, _| {
                std::fs::create_dir(d.join(TOMBSTONES_DIR)).unwrap();
                for n in 1..=3 {
                    write_tombstone_file(d, n);
                }
            },
        ),
        (
            "killed while writing FORMAT (before its rename)",
            |d, tmp| {
                std::fs::create_dir(d.join(TOMBSTONES_DIR)).unwrap();
                for n in 1..=3 {
                    write_tombstone_file(d, n);
                }
                std::fs::write(d.join(tmp("FORMAT")), b"accord-room-da").unwrap();
            },
        ),
        (
            "killed after writing FORMAT 2, before removing tombstones.json",
            |d, _| {
                std::fs::create_dir(d.join(TOMBSTONES_DIR)).unwrap();
                for n in 1..=3 {
                    write_tombstone_file(d, n);
                }
                std::fs::write(d.join("FORMAT"), "accord-room-data 2\n").unwrap();
            },
        ),
    ];
    for (i, (what, build)) in states.iter().enumerate() {
        let dir = format_1_dir(root.path(), &format!("state-{i}"));
        build(&dir, &tmp);
        // While FORMAT says 1, tombstones.json is whole: the previous build (which knows
        // only format 1) still reads every tombstone. Once it says 2, the previous build
        // refuses the directory.
        let format = std::fs::read_to_string(dir.join("FORMAT")).unwrap();
        if format == "accord-room-data 1\n" {
            assert_eq!(
                crate::room::tombstones::read_format_1(&dir).unwrap(),
                Some(format_1_tombstones()),
                "{what}: tombstones.json is whole while the format is 1"
            );
        } else {
            assert_eq!(format, "accord-room-data 2\n", "{what}");
            let e = accord_fs::check_format(&dir, "accord-room-data", "room data directory", 1)
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("format 2") && e.contains("format 1"),
                "{what}: {e}"
            );
        }
        let room = Room::open(&dir).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(
            registry_tombstones(&room),
            format_1_tombstones(),
            "{what}: tombstones in the room"
        );
        drop(room);
        assert_eq!(files(&dir), expected, "{what}: files after the migration");
        // And the next start finds format 2 and changes nothing.
        let room = Room::open(&dir).unwrap();
        assert_eq!(registry_tombstones(&room), format_1_tombstones(), "{what}");
        drop(room);
        assert_eq!(files(&dir), expected, "{what}: files after a second start");
    }
}

#[test]
fn a_data_directory_without_a_format_file_is_format_1_and_is_migrated() {
    let root = tempfile::tempdir().unwrap();
    let dir = format_1_dir(root.path(), "legacy");
    std::fs::remove_file(dir.join("FORMAT")).unwrap();
    let room = Room::open(&dir).unwrap();
    assert_eq!(registry_tombstones(&room), format_1_tombstones());
    assert_eq!(
        std::fs::read_to_string(dir.join("FORMAT")).unwrap(),
        "accord-room-data 2\n"
    );
    assert!(!dir.join(FORMAT_1_TOMBSTONES).exists());
    assert_eq!(read_all(&dir).unwrap(), format_1_tombstones());
    // A new, empty directory is format 2 from the start.
    let new = root.path().join("new");
    drop(Room::open(&new).unwrap());
    assert_eq!(
        std::fs::read_to_string(new.join("FORMAT")).unwrap(),
        "accord-room-data 2\n"
    );
    assert!(new.join(TOMBSTONES_DIR).is_dir());
}

#[test]
fn the_migration_rewrites_a_tombstone_file_that_differs_from_tombstones_json() {
    // Not a state a kill leaves (files are renamed into place whole), but one a person might:
    // while the format is 1, tombstones.json is the record.
    let root = tempfile::tempdir().unwrap();
    let dir = format_1_dir(root.path(), "edited");
    std::fs::create_dir(dir.join(TOMBSTONES_DIR)).unwrap();
    let path = dir.join(TOMBSTONES_DIR).join(format!("{}.json", fp(2)));
    std::fs::write(&path, b"{}").unwrap();
    let done = migrate_1_to_2(&dir, "accord-room-data").unwrap();
    assert_eq!(
        done,
        Migrated {
            moved: 3,
            already_there: 0,
            had_format_1_file: true
        }
    );
    assert_eq!(read_all(&dir).unwrap(), format_1_tombstones());
}

#[test]
fn migration_reports_what_an_interrupted_run_had_already_done() {
    let root = tempfile::tempdir().unwrap();
    let dir = format_1_dir(root.path(), "half");
    std::fs::create_dir(dir.join(TOMBSTONES_DIR)).unwrap();
    write_tombstone_file(&dir, 1);
    write_tombstone_file(&dir, 3);
    let done = migrate_1_to_2(&dir, "accord-room-data").unwrap();
    assert_eq!(
        done,
        Migrated {
            moved: 3,
            already_there: 2,
            had_format_1_file: true
        }
    );
    // Interrupted after removing tombstones.json: nothing left to move.
    let dir = format_1_dir(root.path(), "gone");
    std::fs::remove_file(dir.join(FORMAT_1_TOMBSTONES)).unwrap();
    let done = migrate_1_to_2(&dir, "accord-room-data").unwrap();
    assert_eq!(
        done,
        Migrated {
            moved: 0,
            already_there: 0,
            had_format_1_file: false
        }
    );
}

#[test]
fn a_damaged_tombstone_names_itself_and_nothing_is_forgotten() {
    let root = tempfile::tempdir().unwrap();
    // Format 2: a damaged file, a stranger, and a format-1 file are each refused by name.
    let dir = root.path().join("v2");
    drop(Room::open(&dir).unwrap());
    write_tombstone_file(&dir, 1);
    let bad = dir.join(TOMBSTONES_DIR).join(format!("{}.json", fp(2)));
    std::fs::write(&bad, b"{\"agreement_id\": ").unwrap();
    let e = Room::open(&dir).unwrap_err().to_string();
    assert!(
        e.contains(&bad.display().to_string()) && e.contains("damaged"),
        "{e}"
    );
    std::fs::remove_file(&bad).unwrap();
    let stranger = dir.join(TOMBSTONES_DIR).join("notes.txt");
    std::fs::write(&stranger, b"hello").unwrap();
    let e = Room::open(&dir).unwrap_err().to_string();
    assert!(e.contains(&stranger.display().to_string()), "{e}");
    std::fs::remove_file(&stranger).unwrap();
    // A format-1 tombstones.json in a format-2 directory (a migration stopped after FORMAT,
    // or a file copied in by hand) is never ignored: its tombstones join the files, then it
    // goes. A damaged one stops the start, naming it.
    std::fs::write(dir.join(FORMAT_1_TOMBSTONES), b"{\"0101").unwrap();
    let e = Room::open(&dir).unwrap_err().to_string();
    assert!(e.contains("tombstones.json"), "{e}");
    let mut extra = Tombstones::new();
    extra.insert(fp(3), tombstone(3, EndReason::Expired));
    std::fs::write(
        dir.join(FORMAT_1_TOMBSTONES),
        serde_json::to_vec(&extra).unwrap(),
    )
    .unwrap();
    let room = Room::open(&dir).unwrap();
    assert_eq!(
        registry_tombstones(&room).len(),
        2,
        "the file's tombstone joined"
    );
    assert!(!dir.join(FORMAT_1_TOMBSTONES).exists());

    // Format 1 with a damaged tombstones.json: refused by name before anything is written.
    let dir = format_1_dir(root.path(), "v1-damaged");
    std::fs::write(dir.join(FORMAT_1_TOMBSTONES), b"{\"0101").unwrap();
    let e = Room::open(&dir).unwrap_err().to_string();
    assert!(
        e.contains("tombstones.json") && e.contains("nothing was migrated"),
        "{e}"
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("FORMAT")).unwrap(),
        "accord-room-data 1\n"
    );
    assert!(!dir.join(TOMBSTONES_DIR).exists());
}

#[test]
fn only_the_temporary_files_of_atomic_writes_count_as_leftovers() {
    assert!(is_leftover_temp(
        ".tombstones.json.tmp-00001a2b00000007",
        None
    ));
    assert!(is_leftover_temp(
        ".tombstones.json.tmp-00001a2b00000007",
        Some("tombstones.json")
    ));
    assert!(!is_leftover_temp(
        ".tombstones.json.tmp-00001a2b00000007",
        Some("FORMAT")
    ));
    assert!(!is_leftover_temp("tombstones.json.tmp-00001a2b", None));
    assert!(!is_leftover_temp(".tombstones.json.tmp-", None));
    assert!(!is_leftover_temp(".notes.tmp-xyz", None));
}

#[test]
fn the_status_report_reads_tombstones_of_format_1_and_of_an_interrupted_migration() {
    let root = tempfile::tempdir().unwrap();
    let dir = format_1_dir(root.path(), "v1");
    let before = files(&dir);
    let s = crate::status::read_status(&dir).unwrap();
    assert_eq!(s.format, 1);
    let ended: Vec<_> = s.ended.iter().map(|e| e.fingerprint.clone()).collect();
    assert_eq!(ended, [fp(1), fp(2), fp(3)]);
    assert_eq!(s.ended[1].reason, "expired");
    assert_eq!(files(&dir), before, "status changes nothing");
    // Half moved: some in tombstones/, all still in tombstones.json; each listed once.
    std::fs::create_dir(dir.join(TOMBSTONES_DIR)).unwrap();
    write_tombstone_file(&dir, 2);
    let s = crate::status::read_status(&dir).unwrap();
    assert_eq!(s.ended.len(), 3);
    // Migrated.
    drop(Room::open(&dir).unwrap());
    let s = crate::status::read_status(&dir).unwrap();
    assert_eq!((s.format, s.ended.len()), (2, 3));
}
