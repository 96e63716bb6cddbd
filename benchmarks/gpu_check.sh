#!/usr/bin/env bash
# The one script to run on a CUDA machine (< 5 minutes): the CUDA-marked tests, then the benchmarks on the GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device visible'; print(torch.cuda.get_device_name())"
python -m pytest -q -m cuda tests
python benchmarks/extract_bench.py --questions 512
