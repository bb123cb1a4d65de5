#!/usr/bin/env bash
# §10 check on the original breadth suite (dev split, seed 0, default config = 400 steps): does routing the projector
# cost anything where tasks do not conflict? The single LoRA and lora+proj, `breadth-proj.sh g` and `h` side by side.
set -x
export HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 PYTHONPATH="${CODE:-src}"
T=".venv/bin/python -m tsembed"
B="--suite suite-dev --eval-split dev --seeds 0 --set run.num_threads=1 --set run.progress=false
   --derive lora_proj=lora:model.backbone.projector_experts=4 --out runs/breadth-proj"
case "$1" in
  g) while pgrep -f "scaling-proj.sh e" > /dev/null; do sleep 15; done
     [ -f suite-dev/suite.json ] || $T data build-suite --out suite-dev --dev-fraction 0.1
     $T ablate $B --variant lora_proj ;;
  h) while pgrep -f "scaling-proj.sh f" > /dev/null || pgrep -f "build-suite --out suite-dev" > /dev/null \
           || [ ! -f suite-dev/suite.json ]; do sleep 15; done
     $T ablate $B --variant lora ;;
  all) $T ablate $B --variant lora --variant lora_proj --summary-only ;;
esac
