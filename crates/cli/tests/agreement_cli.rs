//! End-to-end tests of `accord keygen` and `accord agreement init | sign | verify | show`.

use std::path::{Path, PathBuf};

use assert_cmd::cargo::cargo_bin_cmd;
use predicates::prelude::*;

fn keygen(dir: &Path, name: &str) -> String {
    let out = cargo_bin_cmd!("accord")
        .args(["keygen", "--out"])
        .arg(dir.join(name))
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let stdout = String::from_utf8(out).expect("stdout is UTF-8");
    assert_eq!(
        stdout.lines().count(),
        1,
        "only the public key on stdout: {stdout:?}"
    );
    let key = stdout.trim().to_owned();
    assert!(key.starts_with("ed25519:"), "{key}");
    key
}

/// A room key (`accord room key` prints one like it).
const ROOM_KEY: &str = "ed25519:11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=";

fn init(dir: &Path, drinks: &str, snacks: &str) -> PathBuf {
    let out = cargo_bin_cmd!("accord")
        .args([
            "agreement",
            "init",
            "--id",
            "drinks-snacks-test",
            "--identifier",
            "email",
        ])
        .args(["--party", &format!("drinks={drinks}")])
        .args(["--party", &format!("snacks={snacks}")])
        .args([
            "--room-key",
            ROOM_KEY,
            "--room-operator",
            "Neutral Rooms Ltd",
        ])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let file = dir.join("agreement.toml");
    std::fs::write(&file, out).expect("write the agreement");
    file
}

#[test]
fn keygen_init_sign_sign_verify() {
    let dir = tempfile::tempdir().unwrap();
    let drinks = keygen(dir.path(), "drinks.key");
    let snacks = keygen(dir.path(), "snacks.key");
    assert_ne!(drinks, snacks);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("drinks.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    // keygen never overwrites.
    cargo_bin_cmd!("accord")
        .args(["keygen", "--out"])
        .arg(dir.path().join("drinks.key"))
        .assert()
        .code(1)
        .stdout(predicate::str::is_empty())
        .stderr(predicate::str::contains("already exists"));

    let file = init(dir.path(), &drinks, &snacks);
    for (party, key) in [("drinks", "drinks.key"), ("snacks", "snacks.key")] {
        cargo_bin_cmd!("accord")
            .args(["agreement", "sign"])
            .arg(&file)
            .args(["--party", party, "--key"])
            .arg(dir.path().join(key))
            .assert()
            .success();
    }
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(
        text.contains("# Accord sharing agreement"),
        "comments are kept"
    );
    cargo_bin_cmd!("accord")
        .args(["agreement", "verify"])
        .arg(&file)
        .assert()
        .success()
        .stdout(predicate::str::contains(
            "valid, in force and signed by every party",
        ));

    // Signing with the wrong party's key is refused and leaves the file alone.
    cargo_bin_cmd!("accord")
        .args(["agreement", "sign"])
        .arg(&file)
        .args(["--party", "snacks", "--key"])
        .arg(dir.path().join("drinks.key"))
        .assert()
        .code(1)
        .stderr(predicate::str::contains("is not party \"snacks\"'s key"));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), text);

    // Tampering breaks it.
    std::fs::write(
        &file,
        text.replace("min_group_size = 50", "min_group_size = 10"),
    )
    .unwrap();
    cargo_bin_cmd!("accord")
        .args(["agreement", "verify"])
        .arg(&file)
        .assert()
        .code(1)
        .stderr(
            predicate::str::contains("signatures.drinks")
                .and(predicate::str::contains("does not verify")),
        );
}

#[test]
fn verify_of_an_unsigned_agreement_lists_the_missing_signatures() {
    let dir = tempfile::tempdir().unwrap();
    let drinks = keygen(dir.path(), "d.key");
    let snacks = keygen(dir.path(), "s.key");
    let file = init(dir.path(), &drinks, &snacks);
    cargo_bin_cmd!("accord")
        .args(["agreement", "verify"])
        .arg(&file)
        .assert()
        .code(1)
        .stderr(
            predicate::str::contains("signatures.drinks")
                .and(predicate::str::contains("signatures.snacks"))
                .and(predicate::str::contains("has not signed")),
        );
}

#[test]
fn init_writes_differential_privacy_and_show_explains_it() {
    let dir = tempfile::tempdir().unwrap();
    let drinks = keygen(dir.path(), "d.key");
    let snacks = keygen(dir.path(), "s.key");
    let file = init(dir.path(), &drinks, &snacks);
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.contains(
        "\ndifferential_privacy = { epsilon_per_query = 0.5, budget = 10.0, delta = 1e-6 }\n"
    ));
    assert!(
        text.contains("\n# exact_results = true\n"),
        "exact results stay an opt-in"
    );
    cargo_bin_cmd!("accord")
        .args(["agreement", "show"])
        .arg(&file)
        .assert()
        .success()
        .stdout(
            predicate::str::contains("differential privacy, epsilon 0.5 per query")
                .and(predicate::str::contains("at most 1.65 times"))
                .and(predicate::str::contains("20 queries"))
                .and(predicate::str::contains("off by about 2.8"))
                .and(predicate::str::contains("WARNING").not()),
        );
}

#[test]
fn show_warns_about_exact_results() {
    let dir = tempfile::tempdir().unwrap();
    let drinks = keygen(dir.path(), "d.key");
    let snacks = keygen(dir.path(), "s.key");
    let file = init(dir.path(), &drinks, &snacks);
    let text = std::fs::read_to_string(&file)
        .unwrap()
        .replace("\ndifferential_privacy = {", "\n# differential_privacy = {")
        .replace("\n# exact_results = true\n", "\nexact_results = true\n");
    std::fs::write(&file, text).unwrap();
    for format in ["text", "markdown"] {
        cargo_bin_cmd!("accord")
            .args(["agreement", "show"])
            .arg(&file)
            .args(["--format", format])
            .assert()
            .success()
            .stdout(
                predicate::str::contains("WARNING")
                    .and(predicate::str::contains("whatever k is"))
                    .and(predicate::str::contains("drinks: MISSING")),
            );
    }
}

#[test]
fn usage_errors_exit_2_and_bad_input_exits_1() {
    cargo_bin_cmd!("accord")
        .args(["agreement", "verify"])
        .assert()
        .code(2);
    let dir = tempfile::tempdir().unwrap();
    let drinks = keygen(dir.path(), "d.key");
    cargo_bin_cmd!("accord")
        .args(["agreement", "init", "--id", "x", "--identifier", "email"])
        .args([
            "--party",
            &format!("drinks={drinks}"),
            "--party",
            &format!("snacks={drinks}"),
        ])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("same public key"));
    cargo_bin_cmd!("accord")
        .args(["agreement", "init", "--id", "x", "--identifier", "phone"])
        .args([
            "--party",
            &format!("drinks={drinks}"),
            "--party",
            "snacks=ed25519:nope",
        ])
        .assert()
        .code(2)
        .stderr(
            predicate::str::contains("--party").and(predicate::str::contains(
                "public key of snacks is not valid",
            )),
        );
    cargo_bin_cmd!("accord")
        .args(["agreement", "init", "--id", "x", "--identifier", "email"])
        .args(["--party", "drinks"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("NAME=PUBKEY"));
    // Other commands' usage errors are caught by the argument parser too.
    cargo_bin_cmd!("accord")
        .args(["query", "--room", "http://127.0.0.1:9", "--agreement", "x"])
        .arg("--key")
        .arg(dir.path().join("d.key"))
        .assert()
        .code(2)
        .stderr(predicate::str::contains("--sql"));
    cargo_bin_cmd!("accord")
        .args(["bench", "psi", "--rows", "0"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("at least 1"));
}

#[test]
fn show_names_the_room_operator_and_warns_when_it_is_a_party() {
    let dir = tempfile::tempdir().unwrap();
    let drinks = keygen(dir.path(), "d.key");
    let snacks = keygen(dir.path(), "s.key");
    let file = init(dir.path(), &drinks, &snacks);
    cargo_bin_cmd!("accord")
        .args(["agreement", "show"])
        .arg(&file)
        .assert()
        .success()
        .stdout(
            predicate::str::contains("operator: Neutral Rooms Ltd")
                .and(predicate::str::contains(ROOM_KEY))
                .and(predicate::str::contains("operated by a party").not()),
        );
    // The operator is drinks (by name, in other case).
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(
        &file,
        text.replace("operator = \"Neutral Rooms Ltd\"", "operator = \"DRINKS\""),
    )
    .unwrap();
    cargo_bin_cmd!("accord")
        .args(["agreement", "show"])
        .arg(&file)
        .assert()
        .success()
        .stdout(
            predicate::str::contains("operated by a party of this agreement (drinks")
                .and(predicate::str::contains("state directory")),
        );
    // The room key is snacks's own key.
    std::fs::write(&file, text.replace(ROOM_KEY, &snacks)).unwrap();
    cargo_bin_cmd!("accord")
        .args(["agreement", "show"])
        .arg(&file)
        .assert()
        .success()
        .stdout(predicate::str::contains(
            "operated by a party of this agreement (snacks: the room key is this party's own key",
        ));
}

#[test]
fn init_without_a_room_key_leaves_placeholders_that_do_not_verify() {
    let dir = tempfile::tempdir().unwrap();
    let drinks = keygen(dir.path(), "d.key");
    let snacks = keygen(dir.path(), "s.key");
    let out = cargo_bin_cmd!("accord")
        .args(["agreement", "init", "--id", "x", "--identifier", "email"])
        .args(["--party", &format!("drinks={drinks}")])
        .args(["--party", &format!("snacks={snacks}")])
        .assert()
        .success()
        .stderr(predicate::str::contains("accord room key --data-dir"))
        .get_output()
        .stdout
        .clone();
    let file = dir.path().join("a.toml");
    std::fs::write(&file, out).unwrap();
    cargo_bin_cmd!("accord")
        .args(["agreement", "verify"])
        .arg(&file)
        .assert()
        .code(1)
        .stderr(predicate::str::contains("room.public_key"));
}
