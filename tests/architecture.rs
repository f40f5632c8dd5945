//! The crate map in `docs/ARCHITECTURE.md` is true of the code (issue 10): the dependency
//! arrows between our crates, and which crates may use gRPC or DataFusion, are read from the
//! page's `arrows` and `transports` blocks and compared with `cargo metadata`; and inside
//! `accord-agreement` and `accord-engine` the modules import each other one way (no loops).
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
/// of it names tonic, prost or a generated protobuf message (`v1::`); it takes and gives the
/// plain types of `api.rs`, which `wire.rs` converts. Production files stay small enough to
/// read at once.
#[test]
fn the_rooms_core_knows_nothing_of_grpc() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let src = root.join("crates/room/src");
    // The adapters and the server wiring: the only files that may use tonic.
    let transport = ["grpc.rs", "flight.rs", "lib.rs", "tls.rs"];
    // The adapter's conversions: protobuf messages, but no tonic.
    let wire = ["wire.rs"];
    let mut files = Vec::new();
    rust_files(&src, &src, &mut files);
    let names: BTreeSet<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
    for f in transport
        .iter()
        .chain(&wire)
        .chain(&["api.rs", "room/psi.rs", "room/login.rs"])
    {
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
        if !transport.contains(&name.as_str()) && !wire.contains(&name.as_str()) {
            assert!(
                !text.contains("v1::")
                    && !text.contains("prost")
                    && !text.contains("accord_proto::v1"),
                "crates/room/src/{name} is part of the room's core but names a protobuf type: it works \
                 on the plain types of api.rs (wire.rs converts)"
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

/// The modules a crate's files name through `crate::…` (a module's submodule files count as
/// the module): `crate::m::x` and `use crate::{m::x}`
/// are an edge to `m`; `crate::X` and `use crate::{X}` are an edge to the module `lib.rs`
/// re-exports `X` from. Comments and everything from the first `#[cfg(test)]` on are ignored
/// (tests may reach anywhere); `lib.rs` itself is the crate's root, not a node.
fn module_imports(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let lib = std::fs::read_to_string(src.join("lib.rs")).unwrap();
    // Without comments and test code: a `#[cfg(test)] mod x;` line is skipped, an inline
    // `#[cfg(test)] mod tests { … }` ends the file's code.
    let code = |text: &str| -> String {
        let mut out = Vec::new();
        let mut lines = text.lines().filter(|l| !l.trim_start().starts_with("//"));
        while let Some(line) = lines.next() {
            if line.trim() != "#[cfg(test)]" {
                out.push(line);
                continue;
            }
            match lines.find(|l| !l.trim_start().starts_with("#[")) {
                Some(item) if item.trim_end().ends_with(';') => {}
                _ => break,
            }
        }
        out.join("\n")
    };
    let lib = code(&lib);
    let modules: BTreeSet<String> = lib
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            let l = l.strip_prefix("pub ").unwrap_or(l);
            l.strip_prefix("mod ")?.strip_suffix(';').map(str::to_owned)
        })
        .collect();
    // Names lib.rs re-exports, by the module that defines them.
    let mut owner: BTreeMap<String, String> = BTreeMap::new();
    for item in lib.split("pub use ").skip(1) {
        let item = &item[..item.find(';').unwrap()];
        let Some((module, names)) = item.split_once("::") else {
            continue;
        };
        if !modules.contains(module.trim()) {
            continue;
        }
        for name in names.split([',', '{', '}']).map(str::trim) {
            let name = name.rsplit(" as ").next().unwrap().trim();
            if !name.is_empty() {
                owner.insert(name.to_owned(), module.trim().to_owned());
            }
        }
    }
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let mut graph = BTreeMap::new();
    for module in &modules {
        // A module is its file and, when it has submodules, every file under its directory
        // (`parse.rs` and `parse/*.rs` are one node: their imports are the module's).
        let mut text = String::new();
        let file = src.join(format!("{module}.rs"));
        if file.exists() {
            text.push_str(&code(&std::fs::read_to_string(&file).unwrap()));
        }
        let dir = src.join(module);
        if dir.is_dir() {
            let mut inner = Vec::new();
            rust_files(&dir, &dir, &mut inner);
            for (_, t) in &inner {
                text.push('\n');
                text.push_str(&code(t));
            }
        }
        assert!(
            !text.is_empty(),
            "{}: no source for module {module}",
            src.display()
        );
        let mut targets = BTreeSet::new();
        let mut add = |segment: &str| {
            let segment = segment.trim();
            let first = ident(segment);
            let target = if modules.contains(&first) {
                Some(first)
            } else {
                owner.get(&first).cloned()
            };
            if let Some(t) = target.filter(|t| t != module) {
                targets.insert(t);
            }
        };
        for rest in text.split("crate::").skip(1) {
            if let Some(group) = rest.strip_prefix('{') {
                let group = &group[..group.find(';').unwrap_or(group.len())];
                let mut depth = 0;
                let mut start = 0;
                for (i, c) in group.char_indices() {
                    match c {
                        '{' => {
                            if depth == 0 {
                                add(&group[start..i]);
                            }
                            depth += 1;
                        }
                        '}' if depth == 0 => {
                            add(&group[start..i]);
                            break;
                        }
                        '}' => {
                            depth -= 1;
                            start = i + 1;
                        }
                        ',' if depth == 0 => {
                            add(&group[start..i]);
                            start = i + 1;
                        }
                        _ => {}
                    }
                }
            } else {
                add(rest);
            }
        }
        graph.insert(module.clone(), targets);
    }
    graph
}

/// A cycle in `graph`, if there is one, as the modules along it.
fn cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|p| p == node) {
            let mut found = path[i..].to_vec();
            found.push(node.to_owned());
            return Some(found);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(found) = visit(next, graph, path, done) {
                return Some(found);
            }
        }
        path.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|n| visit(n, graph, &mut Vec::new(), &mut done))
}

/// Issue 10: inside `accord-agreement` (manifest ↔ parse ↔ canonical) and `accord-engine`
/// (ast ↔ spec) the modules imported each other in loops; they now point one way, and this
/// keeps them so. Checked to fail on the loops it was written against.
#[test]
fn module_imports_inside_agreement_and_engine_point_one_way() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    for krate in ["crates/agreement/src", "crates/engine/src"] {
        let graph = module_imports(&root.join(krate));
        // The scan must see the edges it is about, or it proves nothing.
        let edge = |from: &str, to: &str| graph[from].contains(to);
        if krate.contains("agreement") {
            assert!(
                edge("parse", "manifest") && edge("canonical", "manifest"),
                "{graph:?}"
            );
            assert!(
                edge("verify", "canonical") && edge("revocation", "verify"),
                "{graph:?}"
            );
        } else {
            assert!(edge("ast", "spec") && edge("plan", "ast"), "{graph:?}");
        }
        assert_eq!(cycle(&graph), None, "{krate}: module imports in a loop");
    }
}

/// Issue 10: no production file over 800 lines, in any crate, so each reads at once. Test
/// files (names ending in `tests.rs`) are exempt; a module that grows past the bound is split
/// by responsibility into submodules (as `agreement/src/parse/` and `party/src/protocol/`).
#[test]
fn every_production_file_reads_at_once() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let crates = root.join("crates");
    let mut checked = 0;
    let mut too_long = Vec::new();
    for entry in std::fs::read_dir(&crates).unwrap() {
        let src = entry.unwrap().path().join("src");
        if !src.is_dir() {
            continue;
        }
        let mut files = Vec::new();
        rust_files(root, &src, &mut files);
        for (name, text) in files {
            if name.ends_with("tests.rs") {
                continue;
            }
            checked += 1;
            let lines = text.lines().count();
            if lines > 800 {
                too_long.push(format!(
                    "{name} has {lines} lines: split it by responsibility into modules of at \
                     most 800 lines (tests may move to a sibling *_tests.rs file)"
                ));
            }
        }
    }
    // The scan must see the crates' files, or it proves nothing.
    assert!(
        checked > 50,
        "only {checked} production files found under crates/*/src"
    );
    assert!(too_long.is_empty(), "{}", too_long.join("\n"));
}
