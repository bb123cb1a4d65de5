#!/usr/bin/env bash
# §9 round 9, run on branch exp/projector-routing (commit ec080ce; not merged): all six datasets, one projector per condition, dev, seed 0.
export HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 TSEMBED_EXP_CONDITION_PROJECTORS=6
common=(--suite suite-conflict --eval-split dev --seeds 0 --set schedule.steps=300 --set schedule.stage1_steps=150
  --set run.num_threads=1 --set run.progress=false
  --set "model.moe.task_hints=[identity,tone,shape,colour,object,colour-word]" --set model.moe.task_hint_init=8.0)
.venv/bin/tsembed ablate "${common[@]}" --variant tsembed_weight --out runs/conflict/condproj6-oracle > runs/conflict/condproj6-oracle.log 2>&1 &
.venv/bin/tsembed ablate "${common[@]}" --variant lora --out runs/conflict/condproj6-lora > runs/conflict/condproj6-lora.log 2>&1 &
wait
