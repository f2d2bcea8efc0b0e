#!/usr/bin/env bash
# One GPU session's checks, ready to run on a lent GPU host that has torch and triton but no network
# (issue 21): the wheels `make gpu-wheels` put in .whl/ (zstandard, nvcomp's library and its Python
# API) are installed into /tmp/site, then `benchmarks/gpu_check.py` runs every section, its JSON and
# log written to $OUT (or ./gpu-out). Usage, from the repository root:
#     make gpu-wheels                  # here, with network: about 40 MB into .whl/
#     bash benchmarks/gpu_session.sh   # there; GPU_CHECK_ARGS adds gpu_check.py options
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-gpu-out}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD:${PYTHONPATH:-}"
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        --find-links .whl zstandard nvidia-libnvcomp-cu13 nvidia-nvcomp-cu13 || exit 1
    export PYTHONPATH="/tmp/site:$PYTHONPATH"
fi
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$OUT/gpu.txt"
python3 -c "from dlrm_comp.compress import nvcomp_batched as n; print('libnvcomp loads:', n.available())" \
    2>&1 | tee -a "$OUT/gpu.txt"
timeout "${GPU_CHECK_TIMEOUT:-540}" python3 benchmarks/gpu_check.py --out "$OUT/gpu.json" ${GPU_CHECK_ARGS:-} \
    > "$OUT/gpu_stdout.json" 2> >(tee "$OUT/gpu_log.txt" >&2)
echo "gpu_check exit $?"
