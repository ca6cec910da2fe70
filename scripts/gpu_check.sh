#!/usr/bin/env bash
# make gpu-check: the first look at a GPU machine, at most 8 minutes, one summary at the end.
#   1. bench attention on CUDA at 4K-32K (the fused kernels against SDPA, which picks flash)
#   2. bench train at 4K-16K (the paper's Figure 4 on the LRA Text model)
#   3. the quickstart study (full size) with use_gpu: true, the trial runner
#   4. a 2-worker DDP trial (the train runner), when 2 GPUs exist
# Results land in ${OUT:-gpu_check}/ (CSV, logs); the summary is printed and written to
# summary.txt there. Paste it into the README's "On a GPU" section.
set -uo pipefail
OUT=${OUT:-gpu_check}
BIN=${BIN:-.venv/bin}
mkdir -p "$OUT"
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"
say() { echo "$*" | tee -a "$SUMMARY"; }
step() {  # step NAME SECONDS COMMAND...: run with a time limit, keep its log, note rc and time
    local name=$1 limit=$2; shift 2
    local t0=$SECONDS
    timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
    local rc=$?
    say "$name: rc=$rc in $((SECONDS - t0)) s (log $OUT/$name.log)"
    tail -n 25 "$OUT/$name.log" >> "$SUMMARY"
}
NGPU=$("$BIN/python" -c "import torch; print(torch.cuda.device_count())")
say "GPUs: $NGPU; $("$BIN/python" -c "import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none')")"
[ "$NGPU" -ge 1 ] || { say "no CUDA device: nothing to check"; exit 1; }
step attention 120 "$BIN/lk-study" bench attention --device cuda --lengths 4096 8192 16384 32768 \
    --batch 4 --repeats 5 --out "$OUT/attention.csv"
step train 150 "$BIN/lk-study" bench train --device cuda --lengths 4096 8192 16384 \
    --repeats 3 --out "$OUT/train.csv"
GPU_SET=(--set scaling.use_gpu=true --set 'scaling.resources_per_worker={CPU: 2, GPU: 1}')
step study 150 "$BIN/lk-study" tune search_spaces/quickstart.yaml "${GPU_SET[@]}" \
    --storage "$OUT/studies"
if [ "$NGPU" -ge 2 ]; then
    step ddp 90 "$BIN/lk-study" train search_spaces/quickstart.yaml --smoke "${GPU_SET[@]}" \
        --set scaling.num_workers=2 --storage "$OUT/studies"
else
    say "ddp: skipped (1 GPU)"
fi
echo; echo "== summary ($SUMMARY) =="; cat "$SUMMARY"
