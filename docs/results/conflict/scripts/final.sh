#!/usr/bin/env bash
# Eval comparison of docs/results/conflict §2: TSEmbed as selected on dev (router_input=text) vs the
# same-total-parameters LoRA, seeds 0-2, eval split read once. `final.sh SEED WAIT_PATTERN`.
set -x
export HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1
while [ -n "$2" ] && pgrep -f "ablate.*$2" > /dev/null; do sleep 15; done
.venv/bin/tsembed ablate --suite suite-conflict --seeds "$1" --variant lora --variant tsembed_weight \
  --set model.moe.router_input=text --set schedule.steps=300 --set schedule.stage1_steps=150 \
  --set run.num_threads=1 --set run.progress=false --out runs/conflict/final
