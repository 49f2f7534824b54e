#!/usr/bin/env bash
# Build and run int8_step_components.c (see its header) with the avx512 level's flags from
# setup.py. Usage: benchmarks/int8_step_components.sh [--exhaustive]; needs an AVX-512 CPU,
# gcc and an importable fusedoptim (for the maps).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
python - "$tmp" <<'PY'
import sys
from fusedoptim.quant import dynamic_map
dynamic_map(True).tofile(f"{sys.argv[1]}/signed.bin")
dynamic_map(False).tofile(f"{sys.argv[1]}/unsigned.bin")
PY
gcc -O3 -fno-math-errno -fno-trapping-math -ffp-contract=off -fopenmp-simd \
    -mavx512f -mavx512vl -mavx512bw -mavx512dq -mavx2 -mf16c -mprefer-vector-width=512 \
    -I "$here/../cython_kernels" "$here/int8_step_components.c" -o "$tmp/components" -lm
"$tmp/components" "$tmp/signed.bin" "$tmp/unsigned.bin" "$@"
