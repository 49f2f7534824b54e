#!/usr/bin/env bash
# Time `pip install .` of two commits, alternated (A, B, A, B, ...): each from a clean clone of
# this repository into a fresh venv, with pip's cache as it is (warm after the first round).
#   benchmarks/build_time.sh OLD_REV NEW_REV [ROUNDS]
# Prints one line per build; then a second install of NEW_REV's clone, unchanged.
set -euo pipefail
old=$1 new=$2 rounds=${3:-2}
repo="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

time_install() {   # time_install <clone dir> <venv dir>
    local t0 t1
    t0=$(date +%s.%N)
    (cd "$1" && "$2/bin/pip" install -q . >"$work/log" 2>&1) || { tail -30 "$work/log"; exit 1; }
    t1=$(date +%s.%N)
    python3 -c "print(f'{$t1 - $t0:.1f} s')"
}

for round in $(seq "$rounds"); do
    for rev in "$old" "$new"; do
        rm -rf "$work/clone" "$work/venv"
        git clone -q "$repo" "$work/clone" && git -C "$work/clone" checkout -q "$rev"
        python3 -m venv "$work/venv"
        echo "round $round  $rev  $(time_install "$work/clone" "$work/venv")"
    done
done
echo "second install of $new, same tree  $(time_install "$work/clone" "$work/venv")"
