#!/usr/bin/env bash
# Everything issue 13 asks of a CUDA GPU, in one command, with its logs in one folder:
# the GPU tests (the loop's numerics and syncs, CUDA graphs, no-Triton fallback, batching,
# the memory guard) and the benchmark at 512², cutn 32, batches 1/2/4/8, compile off and on.
#
#   bash bench/gpu_check.sh [OUTDIR] [tests|bench|all]      (default: gpu-check all)
#
# It uses whatever `python3` (or $PYTHON) holds torch with CUDA. On a host that cannot
# reach a package index, bring the project's other runtime packages as wheels in .whl/ at
# the repository's root (pure-Python or built for that host's Python): they are installed
# into a folder of their own and put on PYTHONPATH, leaving the host's torch as it is.
# The tests take a few minutes, the benchmark about as long (compiling for each shape).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-gpu-check}
part=${2:-all}
python=${PYTHON:-python3}
case $part in tests|bench|all) ;; *) echo "the part is tests, bench or all, not '$part'" >&2; exit 2 ;; esac
mkdir -p "$out"

if ! "$python" - >"$out/device.txt" 2>&1 <<'EOF'
import sys
import torch
if not torch.cuda.is_available():
    sys.exit("no CUDA GPU here: nothing to check (the CPU's figures come from bench/benchmark.py --device cpu)")
print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, CUDA {torch.version.cuda}, "
      f"{torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB")
EOF
then
    cat "$out/device.txt" >&2
    exit 2
fi
cat "$out/device.txt"

if compgen -G ".whl/*.whl" >/dev/null; then
    site=$(mktemp -d)
    "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" .whl/*.whl || exit
    export PYTHONPATH=$site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1

status=0
if [ "$part" != bench ]; then
    "$python" -m pytest -q -rs -p no:cacheprovider -o addopts= -s \
        tests/engine/test_gpu.py tests/engine/test_gpu_throughput.py 2>&1 | tee "$out/gpu_tests.log" || status=1
fi
if [ "$part" != tests ]; then
    "$python" bench/benchmark.py --device cuda --size 512 --cutn 32 2>&1 | tee "$out/benchmark.log" || status=1
fi
exit $status
