#!/usr/bin/env bash
# Time `pip install .` of several commits, alternated (A, B, C, A, B, C, ...): each from a clean
# clone of this repository into a fresh venv, with pip's cache as it is (warm after the first
# round).
#   ROUNDS=2 benchmarks/build_time.sh REV [REV ...]
# Prints one line per build; then a second install of the last REV's clone, unchanged.
set -euo pipefail
rounds=${ROUNDS:-2}
revs=("$@")
new=${revs[-1]}
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
    for rev in "${revs[@]}"; do
        rm -rf "$work/clone" "$work/venv"
        git clone -q "$repo" "$work/clone" && git -C "$work/clone" checkout -q "$rev"
        python3 -m venv "$work/venv"
        echo "round $round  $rev  $(time_install "$work/clone" "$work/venv")"
    done
done
echo "second install of $new, same tree  $(time_install "$work/clone" "$work/venv")"
