#!/usr/bin/env bash
# §10: routed projector experts vs the §6 TSEmbed on dev (seeds 0-2). The rank-80 LoRA and eval: projmix2.sh.
# (As run, lanes a/b also trained `--variant lora --set model.moe.rank=80`, which is a rank-320 LoRA: see §10.)
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
;;
  b)  # the reference's seeds 1-2 on dev: §6's trained models, evaluated only
    $T ablate $B --seeds 1 --seeds 2 $TSE --out runs/conflict/final
    for s in 0 1 2; do $T ablate $B --seeds $s --variant lora $PROJ --out runs/conflict/projmix-lora; done ;;
esac
