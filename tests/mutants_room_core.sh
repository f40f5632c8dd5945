#!/usr/bin/env bash
# Mutation testing of the room's pure upload checks, sealing join, Arrow helpers and store
# (docs/TESTING.md, "Room core runs"), judged by their unit tests.
#
#   tests/mutants_room_core.sh           # checks.rs, join.rs, columns.rs, store/
#   tests/mutants_room_core.sh FILE...   # only these files (paths under crates/room/src)
#
# It mutates a detached git worktree of the committed HEAD (so the working tree stays
# usable) and builds in its own target directory, seeded with the dependency artifacts of
# target/debug (rlib, rmeta, so, d; no test binaries: about 4 GB instead of 19). Builds use
# `--workspace --lib`, the feature set of the warm build: `-p accord-room` would resolve
# features for the room alone and rebuild DataFusion. Each mutant then rebuilds the room and
# its dependents' library tests (about 15 s here) and runs only the room's store, check and
# join tests. Results land in mutants.out/room-core/.
set -euo pipefail

VERSION=27.1.0
root="$(cd "$(dirname "$0")/.." && pwd)"
if ! cargo mutants --version 2>/dev/null | grep -q "$VERSION"; then
    cargo install cargo-mutants --version "$VERSION" --locked
fi

files=("$@")
if [ ${#files[@]} -eq 0 ]; then
    files=(checks.rs join.rs columns.rs store/mod.rs store/files.rs store/types.rs)
fi
args=()
for f in "${files[@]}"; do
    args+=(-f "crates/room/src/$f")
done

scratch="$(mktemp -d "${TMPDIR:-/tmp}/accord-mutants-core.XXXXXX")"
cleanup() {
    git -C "$root" worktree remove --force "$scratch/tree" 2>/dev/null || true
    rm -rf "$scratch"
}
trap cleanup EXIT
git -C "$root" worktree add --detach "$scratch/tree" HEAD
mkdir -p "$scratch/target/debug/deps"
if [ -d "$root/target/debug" ]; then
    (cd "$root/target/debug" &&
        cp -a build .fingerprint "$scratch/target/debug/" &&
        find deps -maxdepth 1 -type f \( -name '*.rlib' -o -name '*.rmeta' -o -name '*.so' -o -name '*.d' \) \
            -print0 | xargs -0 -r cp -a -t "$scratch/target/debug/deps/")
fi

cd "$scratch/tree"
CARGO_TARGET_DIR="$scratch/target" nice -n 10 cargo mutants --in-place \
    --workspace --test-workspace true --timeout 300 -C=--lib \
    --output "$root/mutants.out/room-core" "${args[@]}" \
    -- -- checks:: join:: columns:: store:: || true

for f in caught missed unviable timeout; do
    if [ -f "$root/mutants.out/room-core/mutants.out/$f.txt" ]; then
        printf '%-9s %s\n' "$f" "$(wc -l <"$root/mutants.out/room-core/mutants.out/$f.txt")"
    fi
done
