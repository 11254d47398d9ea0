#!/usr/bin/env bash
# GPU checks, on a machine with a CUDA build of torch (needs torch, numpy, msgpack, pyzmq, PyYAML, pytest):
# the model and the fusion service give on the GPU what forward gives, and the model-only serving
# step time against the number of sessions batched into one call, GPU then CPU. Under 5 minutes.
#   bash bench/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
python3 -c "import torch; assert torch.cuda.is_available(), 'no CUDA GPU visible'; print(torch.__version__, torch.cuda.get_device_name())"
python3 -m pytest -q -p no:cacheprovider tests/serving/test_engine.py tests/test_model.py
python3 bench/serve_latency.py --model-only cuda
python3 bench/serve_latency.py --model-only cpu
