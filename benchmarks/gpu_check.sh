#!/usr/bin/env bash
# Every GPU figure README quotes, in one run of under 8 minutes on one GPU (about 4 on an H100):
# extraction throughput with JPEGs decoded on the device (nvjpeg) and with PIL, cached training
# throughput against a bare loop, and bf16 against fp32 (features, trained predictions).
# Runs from the repository root with the machine's own python3 and PyTorch: crossfuse is used from
# src/, not installed. The figures are printed and written to ${OUT:-.}/gpu_check.json.
#
#   bash benchmarks/gpu_check.sh            # on a GPU machine
#   bash benchmarks/gpu_check.sh --cpu --items 64 --epochs 1   # the same steps on a CPU (no figures)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
# crossfuse's own dependencies that a GPU image may lack: name them before any work starts
missing=$("$PYTHON" - <<'PY'
import importlib.util
need = ["torch", "torchvision", "lightning_fabric", "numpy", "pandas", "pyarrow", "PIL", "safetensors", "tokenizers",
        "sklearn", "matplotlib", "yaml", "tqdm", "scipy"]
print(" ".join(m for m in need if importlib.util.find_spec(m) is None))
PY
)
if [ -n "$missing" ]; then
  echo "gpu_check: missing Python modules: $missing" >&2
  echo "carry them as wheels (pip download --no-deps --only-binary=:all: ... -d .whl) and install with" >&2
  echo "  python3 -m pip install --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site" >&2
  exit 3
fi
exec timeout 480 "$PYTHON" benchmarks/gpu_check.py --json "${OUT:-.}/gpu_check.json" "$@"
