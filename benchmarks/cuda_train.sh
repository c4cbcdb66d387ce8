#!/usr/bin/env bash
# GPU check, for the device machine: BlaGPT's gpt2+124m shape on one CUDA GPU in bf16 with
# torch.compile, single process, no MLflow; prints tokens/s, step time, MFU and peak memory.
#
# The GPU image has torch but not pydantic (nor mlflow/heavyball, which --no-track avoids).
# Before the call, here:  echo /.whl/ >> .git/info/exclude; then download for cp312 manylinux:
#   pydantic pydantic-core annotated-types typing-inspection (see /work/.library/device/README.md)
# and run with carry [".whl"]:  bash benchmarks/cuda_train.sh
set -euo pipefail
export PYTHONUNBUFFERED=1
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . -e plugins/blagpt
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -m blagpt train --model blagpt --no-track --no-progress \
  --set model.preset=gpt2+124m --set train.compile=true --set train.seq_len=1024 \
  --set train.micro_batch_size=16 --set train.steps=${STEPS:-80} --set train.log_interval=20 \
  --set train.eval_interval=0 --set train.eval_tokens=65536 --set tracking.run_name=cuda-check
