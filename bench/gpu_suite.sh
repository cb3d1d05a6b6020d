#!/usr/bin/env bash
# The GPU benchmarks in one go, about 8 minutes on one H200: training throughput of stock
# Detectron2 and of our pipeline, also with its speed settings back at detectron2's
# (ours+stocklevers) and one at a time (ours+nchw, ours+nopin), and our model step alone
# (ours+fixedbatch); then evaluation inference and the mask-loss targets, batched against one
# ROIAlign per crop. Tables, JSON and logs go to the folder given.
#
#   bash bench/gpu_suite.sh [RESULTS_DIR]        # default output/gpu_suite
#   RUNS=stock,ours bash bench/gpu_suite.sh      # fewer training runs
#   SMOKE=1 bash bench/gpu_suite.sh              # tiny sizes on a CPU: checks that all runs work
set -euo pipefail
out=${1:-output/gpu_suite}
py=${PYTHON:-python3}
smoke=${SMOKE:+--smoke}
work=${WORK_DIR:-output/gpu_suite_work}
runs=${RUNS:-stock,ours,ours+stocklevers,ours+nchw,ours+nopin,ours+fixedbatch}
mkdir -p "$out"
"$py" bench/train_throughput.py $smoke --work-dir "$work/train" --runs "$runs" | tee "$out/train.txt"
cp "$work/train/results.json" "$out/train_results.json"
for log in "$work"/train/*.log; do cp "$log" "$out/train_$(basename "$log")"; done
"$py" bench/eval_inference.py $smoke --work-dir "$work/eval" | tee "$out/eval.txt"
"$py" bench/mask_targets.py ${SMOKE:+--images 2 --repeat 1} --work-dir "$work/masks" | tee "$out/mask_targets.txt"
