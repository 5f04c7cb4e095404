#!/usr/bin/env bash
# The GPU rows of bench/README.md, in one run on one CUDA machine:
#   1. bench/train_step.py at real size: htf, batch 128, 224 x 224, bf16 autocast; the model
#      step alone on an in-memory batch against hearflow's loop reading a prepared folder, then
#      the shards of the same clips with 8 workers, with and without train.gpu_inputs (issue 18);
#   2. the CUDA paths of `hearflow train` and `hearflow evaluate` end to end: 2 epochs under
#      torchrun (NCCL process group, bf16 autocast, validation), 1 epoch with fp16 + grad
#      scaler, and evaluate of the best checkpoint on the GPU.
# usage: bash bench/gpu.sh OUT_DIR [WORK_DIR] [LOADER_WORKERS]   (needs the package importable)
set -u -o pipefail
out=${1:?usage: bash bench/gpu.sh OUT_DIR [WORK_DIR] [LOADER_WORKERS]}
work=${2:-/tmp/hearflow-gpu}
workers=${3:-12}
mkdir -p "$out" "$work"
export PYTHONUNBUFFERED=1
status=0
step() {  # step NAME COMMAND...: run, log to $out/NAME.txt, remember a failure, go on
    local name=$1; shift
    echo "== $name: $*"
    local start=$SECONDS
    "$@" >"$out/$name.txt" 2>&1 || { status=1; echo "!! $name failed"; }
    tail -n 8 "$out/$name.txt"
    echo "== $name took $((SECONDS - start)) s"
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, torchvision, av, cv2; print('torch', torch.__version__, 'torchvision', torchvision.__version__,
'av', av.__version__, 'opencv', cv2.__version__, 'cpus', __import__('os').cpu_count())"

step train_step python3 bench/train_step.py --device cuda --batch 128 --steps 20 --workers "$workers" \
    --data "$work/bench"
step train_step_shards_gpu_inputs python3 bench/train_step.py --device cuda --batch 128 --steps 60 --workers 8 \
    --data "$work/bench" --shards --gpu-inputs
step train_step_shards_cpu_inputs python3 bench/train_step.py --device cuda --batch 128 --steps 60 --workers 8 \
    --data "$work/bench" --shards
step synth_val python3 -m hearflow.cli synth "$work/val" --clips 64 --seed 1 --size 456x256 --seconds 3 \
    --workers "$workers"
step prepare_val python3 -m hearflow.cli prepare "$work/val/videos" "$work/val-prepared" --workers "$workers" --quiet
step train_bf16_torchrun torchrun --standalone --nproc-per-node 1 -m hearflow.cli train --preset htf \
    --train "$work/bench/prepared" --val "$work/val-prepared" --val-annotations "$work/val/annotations.json" \
    --out "$work/run-bf16" --epochs 2 --batch-size 32 --workers "$workers" --no-pretrained --device cuda
step train_fp16 python3 -m hearflow.cli train --preset htf --set train.amp=fp16 \
    --train "$work/bench/prepared" --val "$work/val-prepared" --val-annotations "$work/val/annotations.json" \
    --out "$work/run-fp16" --epochs 1 --batch-size 32 --workers "$workers" --no-pretrained --device cuda
step evaluate python3 -m hearflow.cli evaluate --checkpoint "$work/run-bf16/best.pt" --data "$work/val-prepared" \
    --annotations "$work/val/annotations.json" --device cuda --workers "$workers" --out "$out/evaluate.json"
cp "$work/run-bf16/metrics.csv" "$out/metrics-bf16.csv" 2>/dev/null
cp "$work/run-fp16/metrics.csv" "$out/metrics-fp16.csv" 2>/dev/null
exit $status
