#!/usr/bin/env bash
# GPU checks, for the device machine (one H100/H200, under 8 minutes), no MLflow (--no-track):
#   1. BlaGPT's gpt2+124m shape, bf16, torch.compile, seq 1024: tokens/s, MFU and peak memory
#      under train.parallel=ddp (one process) and fsdp (torchrun, one rank: FSDP2's bf16 policy);
#      goal >= 45% MFU (nanochat reports ~41-46% at d12-d18 on H100; modded-nanogpt's 2024-10
#      record is ~366K tokens/s per H100 for GPT-2 124M).
#   2. the soft-capped attention through flex_attention against the explicit (math) path: the
#      same losses (within bf16 noise) and their speed;
#   3. the fused kernels of rwkv7 (kernel=fla) and mamba2 (kernel=fused) against their PyTorch
#      paths (kernel=chunked / torch): losses and speed; skipped, and said so, where the fused
#      library (flash-linear-attention, mamba_ssm) is not installed.
#
# The GPU image has torch but not pydantic (nor mlflow/heavyball, which --no-track avoids).
# Before the call, here:  echo /.whl/ >> .git/info/exclude; then download for cp312 manylinux:
#   pydantic pydantic-core annotated-types typing-inspection (see /work/.library/device/README.md)
# and run with carry [".whl"]:  bash benchmarks/cuda_train.sh      (STEPS=N for longer runs)
set -euo pipefail
export PYTHONUNBUFFERED=1
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . -e plugins/blagpt -e plugins/rwkv7 -e plugins/ssm
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
OUT=${OUT:-/tmp}/cuda-runs
mkdir -p "$OUT"
STEPS=${STEPS:-60}
SHORT=${SHORT:-20}
COMMON=(--no-track --no-progress --set train.seq_len=1024 --set train.eval_interval=0 --set train.eval_tokens=65536
        --set train.log_interval=10 --set "train.out_dir=$OUT")

# the logged figures of a run: median tokens/s and MFU over its logged steps after the first, peak memory, last loss
summary() {
  python3 - "$OUT/$1" "$2" <<'EOF'
import json, statistics, sys
rows = [json.loads(x) for x in open(f"{sys.argv[1]}/metrics.jsonl")]
get = lambda k: [r["value"] for r in rows if r["key"] == k and r["step"] > 10]
tps, mfu, mem = get("train/tokens_per_s"), get("train/mfu"), get("train/peak_mem_mb")
loss = [r for r in rows if r["key"] == "train/loss"][-1]
print(f"{sys.argv[2]:34s} {statistics.median(tps):>10,.0f} tok/s   MFU {statistics.median(mfu) if mfu else float('nan'):6.1%}   "
      f"peak {max(mem) / 1024 if mem else float('nan'):5.1f} GiB   loss@{loss['step']} {loss['value']:.4f}")
EOF
}

echo "== 1. blagpt gpt2+124m, bf16, compiled, seq 1024, micro-batch 16, $STEPS steps"
M124=(--model blagpt --set model.preset=gpt2+124m --set train.compile=true --set train.micro_batch_size=16 --set train.steps=$STEPS)
python3 -m blagpt train "${M124[@]}" "${COMMON[@]}" --set tracking.run_name=ddp > "$OUT/ddp.log" 2>&1 || { tail -20 "$OUT/ddp.log"; exit 1; }
summary ddp "ddp (one process)"
torchrun --standalone --nproc_per_node 1 -m blagpt train "${M124[@]}" "${COMMON[@]}" --set train.parallel=fsdp \
  --set tracking.run_name=fsdp > "$OUT/fsdp.log" 2>&1 || { tail -20 "$OUT/fsdp.log"; exit 1; }
summary fsdp "fsdp (1 rank, bf16 params/reduce)"

echo "== 2. soft-capped attention (attn_softcap=50), eager, $SHORT steps: flex_attention vs explicit"
for be in flex math; do
  python3 -m blagpt train --model blagpt --set model.preset=gpt2+124m --set model.attn_softcap=50 \
    --set model.attn_softcap_backend=$be --set train.micro_batch_size=8 --set train.steps=$SHORT --set train.log_interval=5 \
    "${COMMON[@]}" --set tracking.run_name=softcap-$be > "$OUT/softcap-$be.log" 2>&1 || { tail -5 "$OUT/softcap-$be.log"; continue; }
  summary softcap-$be "softcap $be"
done

echo "== 3. fused kernels vs PyTorch paths, eager, $SHORT steps"
for spec in "rwkv7 fla chunked flash-linear-attention:fla" "mamba2 fused torch mamba_ssm:mamba_ssm"; do
  set -- $spec
  model=$1 fused=$2 plain=$3 lib=${4%%:*} mod=${4##*:}
  if ! python3 -c "import $mod" 2>/dev/null; then echo "$model kernel=$fused: skipped ($lib is not installed here)"; fi
  for k in $plain $fused; do
    if [ "$k" = "$fused" ] && ! python3 -c "import $mod" 2>/dev/null; then continue; fi
    python3 -m blagpt train --model $model --set model.preset=124m --set model.kernel=$k --set train.micro_batch_size=8 \
      --set train.steps=$SHORT --set train.log_interval=5 "${COMMON[@]}" --set tracking.run_name=$model-$k \
      > "$OUT/$model-$k.log" 2>&1 || { echo "$model kernel=$k failed:"; tail -5 "$OUT/$model-$k.log"; continue; }
    summary $model-$k "$model kernel=$k"
  done
done
