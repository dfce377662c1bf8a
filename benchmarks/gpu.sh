#!/usr/bin/env bash
# On a GPU machine, two measurements:
# 1. the founding-claim workload (benchmarks/founding_claim_gpu.py): 1,000
#    replicates x 10,000 generations of a bigram model, markov V = 16,
#    accumulate_subsample, N0 = m = 1000, L = 32, k = 1, 10, 100; target
#    under 10 minutes (skip with SKIP_FOUNDING=1);
# 2. the transformer comparison: the engine at 1024 cells (bfloat16 compute)
#    against PyTorch's per-model loop on the same GPU, in one run of
#    benchmarks/transformer_throughput.py. Needs jax with CUDA, flax,
# optax, orbax-checkpoint, PyYAML and torch in $PYTHON (default python3);
# nothing is downloaded. Budget: the comparison under 5 minutes on an H200
# (compilation included), the founding-claim workload under 10. Prints a table with achieved training TFLOP/s against the
# chip's bf16 dense peak, writes benchmarks/results/transformer_gpu.json and
# appends rows to benchmarks/RESULTS.md.
#
#   bash benchmarks/gpu.sh                 # peak looked up from the device name
#   PEAK_TFLOPS=989 bash benchmarks/gpu.sh # or given
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
# the package as installed (kernels/ becomes collapse_sim.kernels), into a
# throwaway directory: no network, no build isolation, no dependencies
SITE=$(mktemp -d)
"$PY" -m pip install --quiet --no-deps --no-build-isolation --target "$SITE" . >&2
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

"$PY" -c "import jax, sys; d = jax.devices()[0]; sys.exit(0 if d.platform == 'gpu' else 'no GPU: jax sees ' + str(jax.devices()))"
"$PY" -c "import torch; assert torch.cuda.is_available(), 'torch sees no CUDA device'"

if [ "${SKIP_FOUNDING:-0}" != 1 ]; then
  "$PY" benchmarks/founding_claim_gpu.py
fi

# bf16 dense (no sparsity) peaks from the vendors' data sheets, TFLOP/s; the
# first pattern that matches the device name wins (PCIe H100 before SXM)
PEAK=${PEAK_TFLOPS:-$("$PY" - <<'PY'
import re, sys
import jax
kind = jax.devices()[0].device_kind
peaks = [(r"H200", 989), (r"H100.*PCIe", 756), (r"H100", 989), (r"A100", 312), (r"L40S", 362), (r"L4\b", 121)]
peak = next((v for pat, v in peaks if re.search(pat, kind)), 0)
print(f"{kind}: bf16 peak {peak or 'unknown (set PEAK_TFLOPS)'} TFLOP/s", file=sys.stderr)
print(peak)
PY
)}
args=(--cells 1024 --dtype bfloat16 --batches 32,64 --repeats 3 --torch-cells 4 --name transformer_gpu)
[ "$PEAK" != 0 ] && args+=(--peak-tflops "$PEAK")
exec "$PY" benchmarks/transformer_throughput.py "${args[@]}" --torch-python "$PY"
