#!/usr/bin/env bash
# §9 round 7, run on branch exp/projector-routing (commit 10b5c57: the backbone routes each image with its input's hint;
# not merged: valid only when every input has an image). Experts on the visual projector too, its own weights frozen.
# (a) condition-routed MoE: each condition's expert also owns a low-rank delta of the projector;
# (b) the single LoRA r32 with the same targets (one shared projector delta).
export HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1
TM='model.moe.target_modules=[text\.encoder\.layer\.\d+\.attention\.self\.(query|key|value),text\.encoder\.layer\.\d+\.attention\.output\.dense,text\.encoder\.layer\.\d+\.(intermediate|output)\.dense,projector\.proj\.(0|2)]'
common=(--suite suite-conflict --eval-split dev --seeds 0 --set schedule.steps=100 --set schedule.stage1_steps=50
  --set run.num_threads=1 --set run.progress=false --set "data.datasets=[TintSameEmoji,TintSameColour]"
  --set model.backbone.train_projector=false --set "$TM")
.venv/bin/tsembed ablate "${common[@]}" --variant tsembed_weight --set "model.moe.task_hints=[shape,colour]" \
  --set model.moe.task_hint_init=8.0 --out runs/conflict/pair/oracle-projexperts > runs/conflict/pair/oracle-projexperts.log 2>&1 &
.venv/bin/tsembed ablate "${common[@]}" --variant lora --out runs/conflict/pair/lora-projlora > runs/conflict/pair/lora-projlora.log 2>&1 &
wait
.venv/bin/tsembed eval -m runs/conflict/pair/oracle-projexperts/seed0/tsembed_weight/model -s suite-conflict \
  -d TintSameEmoji,TintSameColour --split dev --no-progress -o runs/conflict/pair/oracle-projexperts/seed0/tsembed_weight/dev
