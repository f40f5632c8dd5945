//! The crate map in `docs/ARCHITECTURE.md` is true of the code (issue 10): the dependency
//! arrows between our crates, and which crates may use gRPC or DataFusion, are read from the
//! page's `arrows` and `transports` blocks and compared with `cargo metadata`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

type Map = BTreeMap<String, BTreeSet<String>>;

fn block(doc: &str, tag: &str) -> Map {
    let fence = format!("```text {tag}\n");
    let start = doc
        .find(&fence)
        .unwrap_or_else(|| panic!("docs/ARCHITECTURE.md has no ```text {tag} block"))
        + fence.len();
    let end = start + doc[start..].find("```").expect("block end");
    let mut map = Map::new();
    for line in doc[start..end].lines().filter(|l| !l.trim().is_empty()) {
        let (key, values) = line
            .split_once("->")
            .or_else(|| line.split_once(':'))
            .unwrap_or_else(|| panic!("malformed line in the {tag} block: {line:?}"));
        let values = values.split_whitespace().map(str::to_owned).collect();
        assert!(
            map.insert(key.trim().to_owned(), values).is_none(),
            "{key} twice in the {tag} block"
        );
    }
    map
}

/// Every workspace package's normal (non-dev, non-build) dependencies, by name.
fn metadata(root: &Path) -> Map {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(root)
        .output()
        .expect("run cargo metadata");
    assert!(
        out.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut map = Map::new();
    for p in json["packages"].as_array().unwrap() {
        let deps = p["dependencies"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| d["kind"].is_null())
            .map(|d| d["name"].as_str().unwrap().to_owned())
            .collect();
        map.insert(p["name"].as_str().unwrap().to_owned(), deps);
    }
    map
}

#[test]
fn the_crate_arrows_and_transport_users_in_architecture_md_match_cargo_metadata() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let doc = std::fs::read_to_string(root.join("docs/ARCHITECTURE.md")).unwrap();
    let arrows = block(&doc, "arrows");
    let transports = block(&doc, "transports");
    let actual = metadata(root);

    let ours: BTreeSet<&String> = actual
        .keys()
        .filter(|n| n.starts_with("accord-") && *n != "accord-tests")
        .collect();
    let documented: BTreeSet<&String> = arrows.keys().collect();
    assert_eq!(
        documented, ours,
        "the arrows block must list every crate of ours"
    );
    for (name, deps) in &arrows {
        let real: BTreeSet<String> = actual[name]
            .iter()
            .filter(|d| d.starts_with("accord-"))
            .cloned()
            .collect();
        assert_eq!(
            &real, deps,
            "{name}: cargo metadata says it depends on {real:?}, docs/ARCHITECTURE.md says {deps:?}"
        );
    }
    for (library, allowed) in &transports {
        let real: BTreeSet<String> = ours
            .iter()
            .filter(|n| actual[**n].contains(library))
            .map(|n| (*n).clone())
            .collect();
        assert_eq!(
            &real, allowed,
            "{library}: used by {real:?}, docs/ARCHITECTURE.md allows {allowed:?}"
        );
    }
}

/// Every `.rs` file under `dir`, with its path relative to `base`.
fn rust_files(base: &Path, dir: &Path, out: &mut Vec<(String, String)>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(base, &path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let rel = path
                .strip_prefix(base)
                .unwrap()
                .to_string_lossy()
                .replace('\\', "/");
            out.push((rel, std::fs::read_to_string(&path).unwrap()));
        }
    }
}

/// The room's core (everything in `crates/room/src` but the gRPC and Flight SQL adapters
/// and the server wiring that starts them) does not know the transport (issue 10): no file
/// of it names tonic, and the files already converted name no generated protobuf message
/// either. Production files stay small enough to read at once.
#[test]
fn the_rooms_core_knows_nothing_of_grpc() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let src = root.join("crates/room/src");
    // The adapters and the server wiring: the only files that may use tonic.
    let transport = ["grpc.rs", "flight.rs", "lib.rs", "tls.rs"];
    // Core files that also name no protobuf message (`v1::`) nor prost.
    let proto_free = [
        "checks.rs",
        "checks_tests.rs",
        "columns.rs",
        "join.rs",
        "store/mod.rs",
        "store/files.rs",
        "store/types.rs",
        "room/seal.rs",
        "error.rs",
        "auth.rs",
        "registration.rs",
        "limits.rs",
        "identity.rs",
        "config.rs",
        "ledger.rs",
    ];
    let mut files = Vec::new();
    rust_files(&src, &src, &mut files);
    let names: BTreeSet<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
    for f in transport.iter().chain(&proto_free) {
        assert!(
            names.contains(f),
            "crates/room/src/{f} no longer exists: update this test"
        );
    }
    for (name, text) in &files {
        if !transport.contains(&name.as_str()) {
            assert!(
                !text.contains("tonic"),
                "crates/room/src/{name} is part of the room's core but mentions tonic: transport \
                 types belong in grpc.rs or flight.rs"
            );
        }
        if proto_free.contains(&name.as_str()) {
            assert!(
                !text.contains("v1::") && !text.contains("prost"),
                "crates/room/src/{name} names a protobuf type: it works on plain data"
            );
        }
        let is_test = name.ends_with("tests.rs");
        let lines = text.lines().count();
        assert!(
            is_test || lines <= 800,
            "crates/room/src/{name} has {lines} lines; split it by responsibility (at most 800)"
        );
    }
}
