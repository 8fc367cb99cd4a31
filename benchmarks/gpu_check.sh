#!/usr/bin/env bash
# The CUDA paths, checked and measured on a machine with one or more NVIDIA GPUs, in one command (< 8 minutes):
#   1. training steps of PSPNet-R50-D8 (the paper's model) at 512x1024 crops, global batch 8, in fp32, bf16
#      autocast and fp16 autocast with a gradient scaler: images/s and peak GPU memory;
#   2. with 2 or more GPUs, the same on every GPU with DDP and PyTorch's SyncBatchNorm over NCCL;
#   3. a 20-iteration distributed run of the demo config with SyncBN, then `evaluate` on all GPUs.
# Run from the repository root after `make setup`:  bash benchmarks/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
GPUS=$("$PY" -c "import torch; print(torch.cuda.device_count())")
if [ "$GPUS" -lt 1 ]; then echo "no CUDA device: nothing to check"; exit 1; fi
"$PY" -c "import torch; print(torch.__version__, torch.version.cuda, [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())])"

PROCESSES="1"
if [ "$GPUS" -ge 2 ]; then PROCESSES="1 $GPUS"; fi
timeout 360 "$PY" benchmarks/train_step.py --device cuda --config configs/pspnet_r50_cityscapes.yaml \
    --set model.encoder=resnet50_deepstem data.format=synthetic data.root=null \
    --batch 8 --crop 512 1024 --steps 10 --modes fp32 bf16 fp16 --processes $PROCESSES

RUN=$(mktemp -d)
timeout 90 "$PY" -m torch.distributed.run --standalone --nproc-per-node "$GPUS" -m pspnet --quiet train configs/synthetic.yaml \
    --out "$RUN/run" --set train.max_iters=20 train.eval_interval=20 train.checkpoint_interval=20 train.batch_size=$((2 * GPUS)) \
    train.sync_bn=true train.amp=bf16 train.device=cuda
timeout 60 "$PY" -m torch.distributed.run --standalone --nproc-per-node "$GPUS" -m pspnet --quiet evaluate "$RUN/run" --device cuda
echo "gpu check: OK"
