#!/usr/bin/env bash
# §10: routed projector experts vs the §6 TSEmbed on dev (seeds 0-2), and the same-total-parameter LoRA (rank 80).
# `projmix.sh a` and `projmix.sh b` run side by side (one thread each); finished runs are skipped, killed ones resume.
# CODE=/path/to/src runs a frozen copy of the code (the session ran a detached worktree of commit aeb1a44).
set -x
export HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 PYTHONPATH="${CODE:-src}"
T=".venv/bin/python -m tsembed"
B="--suite suite-conflict --eval-split dev --set schedule.steps=300 --set schedule.stage1_steps=150 --set run.num_threads=1 --set run.progress=false"
TSE="--variant tsembed_weight --set model.moe.router_input=text"
PROJ="--set model.backbone.projector_experts=4"
case "$1" in
  a)
    for s in 0 1 2; do $T ablate $B --seeds $s $TSE $PROJ --out runs/conflict/projmix-tsembed; done
    for s in 0 2; do $T ablate $B --seeds $s --variant lora --set model.moe.rank=80 --out runs/conflict/projmix-lora80; done ;;
  b)  # the reference's seeds 1-2 on dev: §6's trained models, evaluated only
    $T ablate $B --seeds 1 --seeds 2 $TSE --out runs/conflict/final
    for s in 0 1 2; do $T ablate $B --seeds $s --variant lora $PROJ --out runs/conflict/projmix-lora; done
    $T ablate $B --seeds 1 --variant lora --set model.moe.rank=80 --out runs/conflict/projmix-lora80b ;;
  c)  # eval, read once (after the dev selection): the selected lora+proj and lora80's seed 1, after lane b
    while pgrep -f "projmix.sh b" > /dev/null; do sleep 15; done
    E="${B/--eval-split dev/--eval-split eval}"
    $T ablate $E --seeds 0 --seeds 1 --seeds 2 --variant lora $PROJ --out runs/conflict/projmix-lora
    $T ablate $E --seeds 1 --variant lora --set model.moe.rank=80 --out runs/conflict/projmix-lora80b ;;
  d)  # eval of lora80's seeds 0 and 2, after lane a
    while pgrep -f "projmix.sh a" > /dev/null; do sleep 15; done
    E="${B/--eval-split dev/--eval-split eval}"
    $T ablate $E --seeds 0 --seeds 2 --variant lora --set model.moe.rank=80 --out runs/conflict/projmix-lora80 ;;
esac
