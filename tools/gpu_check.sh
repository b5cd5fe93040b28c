#!/usr/bin/env bash
# The prepared GPU check (make gpu-check): everything attnzoo wants to know from a GPU, in one
# run of under 8 minutes, each table written to a file as soon as it exists, so that a run cut
# short still leaves what it measured.
#
#   1. the device and versions            device.txt
#   2. the gpu-marked tests                gpu-tests.txt
#   3. attnzoo selftest                    selftest.md    (every fused op vs the reference, 3 dtypes)
#   4. attnzoo bench-ops, bfloat16         bench-ops.md   (kernels vs reference vs FlexAttention)
#   5. attnzoo bench, triton vs reference  bench.md       (smallest model of each fused family)
#
# SMALL=1 rehearses it on a CPU: the tests and selftest under Triton's interpreter at small
# sizes, bench-ops --small, bench at 64 px (minutes, not the GPU's numbers).
# OUT=folder names the results folder (default results/gpu-check-<date>). Works from a plain
# checkout with no pip install (the GPU machine has no network): without an installed attnzoo it
# links the source folders into the package layout pyproject.toml declares.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && PY=.venv/bin/python
OUT=${OUT:-results/gpu-check-$(date -u +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
SMALL=${SMALL:-0}

if ! "$PY" -c "import attnzoo" 2>/dev/null; then
    pkg=$(mktemp -d)/site
    mkdir -p "$pkg/attnzoo"
    for f in zoo/*.py; do ln -s "$PWD/$f" "$pkg/attnzoo/$(basename "$f")"; done
    for d in layers kernels train tools; do ln -s "$PWD/$d" "$pkg/attnzoo/$d"; done
    export PYTHONPATH="$pkg:$PWD/tools${PYTHONPATH:+:$PYTHONPATH}"
fi
AZ=("$PY" -m attnzoo.tools.cli)

step() {  # step NAME SECONDS FILE COMMAND...: run with a time limit, keep its output, go on
    local name=$1 limit=$2 file=$3; shift 3
    echo "== $name (limit ${limit}s) -> $OUT/$file"
    local start=$SECONDS
    timeout "$limit" "$@" > "$OUT/$file" 2>&1
    local rc=$?
    echo "   exit $rc after $((SECONDS - start)) s"
    echo "$name: exit $rc, $((SECONDS - start)) s" >> "$OUT/summary.txt"
    tail -n 3 "$OUT/$file" | sed 's/^/   | /'
}

{
    date -u +"%Y-%m-%d %H:%M UTC"
    git rev-parse HEAD 2>/dev/null
    nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv 2>/dev/null || echo "no nvidia-smi"
    "$PY" -c "import torch, triton, timm; print('torch', torch.__version__, 'cuda', torch.version.cuda, '| triton', triton.__version__, '| timm', timm.__version__); print('device:', torch.cuda.get_device_name() if torch.cuda.is_available() else 'none')"
} > "$OUT/device.txt" 2>&1
cat "$OUT/device.txt"

SMALL_MODELS=nat_mini,az_maxvit_rmlp_pico_rw_256,az_davit_tiny,az_halonet26t,biformer_tiny,transnext_micro
if [ "$SMALL" = 1 ]; then
    step "interpreter tests (fallback, gna)" 300 gpu-tests.txt env TRITON_INTERPRET=1 "$PY" -m pytest -q -p no:cacheprovider -p no:xdist tests/kernels/test_fallback.py
    step "selftest --small" 300 selftest.md "${AZ[@]}" selftest --small --models biformer_tiny --size 32x32
    step "bench-ops --small" 240 bench-ops.md "${AZ[@]}" bench-ops --small --ops gna
    step "bench triton vs reference" 120 bench.md "${AZ[@]}" bench --models nat_mini --img-size 64 --budget 2 --backends reference --no-twins --out "$OUT/bench"
else
    step "gpu tests" 150 gpu-tests.txt "$PY" -m pytest -q -p no:cacheprovider -p no:xdist -m gpu tests/kernels
    step "selftest" 100 selftest.md "${AZ[@]}" selftest
    step "bench-ops bf16" 120 bench-ops.md "${AZ[@]}" bench-ops --device cuda --dtype bfloat16
    step "bench triton vs reference" 100 bench.md "${AZ[@]}" bench --device cuda --models ${SMALL_MODELS//,/ } --backends reference,triton --budget 3 --no-twins --out "$OUT/bench"
fi
echo "tables in $OUT"
cat "$OUT/summary.txt"
