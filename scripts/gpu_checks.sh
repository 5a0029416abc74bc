#!/usr/bin/env bash
# The checks that need a CUDA GPU, as one short run for a lent GPU machine (see DEVELOPERS.md: device time is
# minutes). Writes its figures and logs to ${OUT:-gpu-checks}/. Check it on the CPU first: there the gpu tests
# skip and the benchmark runs its small CPU sizes.
#   bash scripts/gpu_checks.sh            # gpu tests + throughput benchmark
#   QUICK=1 bash scripts/gpu_checks.sh    # the benchmark's --quick smoke sizes
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-gpu-checks}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(),
            torch.cuda.get_device_name() if torch.cuda.is_available() else '')" | tee "$out/device.txt"
python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_gpu.py 2>&1 | tee "$out/gpu_tests.log"
tests=${PIPESTATUS[0]}
python3 tests/benchmarks/gpu_throughput.py ${QUICK:+--quick} --out "$out/gpu_throughput.json" 2>&1 \
  | tee "$out/gpu_throughput.log"
bench=${PIPESTATUS[0]}
echo "gpu tests exit $tests, benchmark exit $bench"
exit $(( tests != 0 || bench != 0 ))
