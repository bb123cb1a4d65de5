#!/usr/bin/env bash
# §10 task scaling (dev, seed 0): the single LoRA and the selected lora+proj on 1, 2, 4, 6 tasks, each task
# relative to its specialist LoRA (§3's, copied to runs/conflict/scaling-proj/seed0/specialist). The 6-task runs
# are §4's LoRA and §10's lora+proj seed 0 (copied to seed0/tasks6/{lora,lora_proj}).
# `scaling-proj.sh e` and `f` run side by side; `scaling-proj.sh all` then assembles the table (trains nothing new).
set -x
export HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 PYTHONPATH="${CODE:-src}"
T=".venv/bin/python -m tsembed"
B="--suite suite-conflict --eval-split dev --seeds 0 --set run.num_threads=1 --set run.progress=false
   --derive lora_proj=lora:model.backbone.projector_experts=4 --out runs/conflict/scaling-proj"
case "$1" in
  e) while pgrep -f "projmix.sh c" > /dev/null; do sleep 15; done
     $T task-scaling $B --variant lora_proj --size 1 --size 2 --size 4 ;;
  f) while pgrep -f "projmix.sh d" > /dev/null; do sleep 15; done
     $T task-scaling $B --variant lora --size 2 --size 4 ;;
  all) $T task-scaling $B --variant lora --variant lora_proj --size 1 --size 2 --size 4 --size 6 ;;
esac
