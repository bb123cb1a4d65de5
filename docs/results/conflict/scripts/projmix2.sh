#!/usr/bin/env bash
# §10, second part (after the dev selection): the same-total-parameter LoRA (rank 80) on dev and eval, the
# selected lora+proj on eval (read once), then task scaling and the breadth-suite check.
# `projmix2.sh A` and `projmix2.sh B` run side by side; every run is resumable and skipped when done.
# (projmix.sh's `--set model.moe.rank=80 --variant lora` was a mistake: `--set` changes the *base* config, from
# which the lora variant takes rank = num_experts × rank = 320; those runs are kept as projmix-lora320*.)
set -x
export HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 PYTHONPATH="${CODE:-src}"
T=".venv/bin/python -m tsembed"
S="docs/results/conflict/scripts"
B="--suite suite-conflict --set schedule.steps=300 --set schedule.stage1_steps=150 --set run.num_threads=1
   --set run.progress=false --derive lora80=lora:model.moe.rank=80"
case "$1" in
  A)
    for split in dev eval; do $T ablate $B --eval-split $split --seeds 0 --seeds 2 --variant lora80 --out runs/conflict/projmix-lora80; done
    $S/scaling-proj.sh e
    $S/breadth-proj.sh g ;;
  B)
    $T ablate $B --eval-split eval --seeds 0 --seeds 1 --seeds 2 --variant lora --set model.backbone.projector_experts=4 \
      --out runs/conflict/projmix-lora
    for split in dev eval; do $T ablate $B --eval-split $split --seeds 1 --variant lora80 --out runs/conflict/projmix-lora80b; done
    $S/scaling-proj.sh f
    $S/breadth-proj.sh h ;;
esac
