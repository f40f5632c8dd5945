#!/usr/bin/env bash
# Mutation testing of Accord's security code with cargo-mutants (docs/TESTING.md, "Mutation
# testing"). Too slow for every CI run: run it before a release and after changing any of
# the files below. Every mutant rebuilds a crate, so the set is scoped to the defences.
#
#   tests/mutants.sh            # the scoped set below
#   tests/mutants.sh room       # also the room's sessions, audit log, budget ledger and allow-list
#   tests/mutants.sh engine     # also the engine's query policy (syntax check, plan check, k rewrite)
#
# It works on a scratch copy of the tree (with a copy of target/ for a warm start), so the
# working tree stays usable; results land in mutants.out/ at the top of the repository.
set -euo pipefail

VERSION=27.1.0
root="$(cd "$(dirname "$0")/.." && pwd)"
if ! cargo mutants --version 2>/dev/null | grep -q "$VERSION"; then
    cargo install cargo-mutants --version "$VERSION" --locked
fi

scratch="$(mktemp -d "${TMPDIR:-/tmp}/accord-mutants.XXXXXX")"
trap 'rm -rf "$scratch"' EXIT
# Sources plus a copy of the warm target directory (hard links would be mutated in place).
tar -C "$root" --exclude=./target --exclude=./mutants.out --exclude=./tests/fuzz/target -cf - . | tar -C "$scratch" -xf -
if [ -d "$root/target" ]; then
    cp -r "$root/target" "$scratch/target"
fi

run() {
    local name="$1"
    shift
    echo "== cargo mutants: $name"
    (cd "$scratch" && nice -n 10 cargo mutants --in-place --timeout 300 \
        --output "$root/mutants.out/$name" "$@") || true
}

# Signature verification, keys, domain separation.
run agreement -p accord-agreement \
    --file crates/agreement/src/keys.rs \
    -F 'PublicKey::verify|PublicKey::from_bytes|signed_message|SecretKey::sign|as_str|from_key_file' \
    -- --lib
# The partner's checks before blinding, and the party's check of the room's signed audit head.
run party -p accord-party \
    --file crates/party/src/protocol/sync.rs --file crates/party/src/client.rs \
    -F 'blind_one|check_head' \
    -- --lib
if [ "${1:-}" = room ]; then
    # Sessions and challenges, the audit chain, the budget ledger, the registration
    # allow-list. `-p accord-room` builds DataFusion once more with the room's own feature
    # set (about 15 minutes here); each mutant after that rebuilds the room in seconds.
    run room -p accord-room \
        --file crates/room/src/auth.rs --file crates/room/src/audit.rs \
        --file crates/room/src/ledger.rs --file crates/room/src/registration.rs \
        -F 'check_challenge|consume|AuthState::session |AuthState::session$|bearer|start_session|AuthState::mac|issue_challenge|expires|end_sessions_for|audit.rs|ledger.rs|registration.rs' \
        -- --lib
fi
if [ "${1:-}" = engine ]; then
    # The query policy: the syntax check, the plan check and the k rewrite, and the entry
    # points that chain them. `-p accord-engine` builds DataFusion once more with the
    # engine's own feature set. First pass with the unit tests only; the second re-judges
    # the survivors with every engine test (the policy corpus, the attack and nesting tests).
    engine_files=(--file crates/engine/src/plan.rs --file crates/engine/src/plan/rewrite.rs
        --file crates/engine/src/ast.rs --file crates/engine/src/lib.rs)
    run engine -p accord-engine "${engine_files[@]}" -- --lib
    run engine -p accord-engine "${engine_files[@]}" --iterate
fi
for d in "$root"/mutants.out/*/; do
    echo "== $(basename "$d")"
    for f in caught missed unviable timeout; do
        if [ -f "$d/mutants.out/$f.txt" ]; then
            printf '%-9s %s\n' "$f" "$(wc -l <"$d/mutants.out/$f.txt")"
        fi
    done
done
