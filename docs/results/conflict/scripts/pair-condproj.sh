#!/usr/bin/env bash
# §9 round 8, run on branch exp/projector-routing (commit ec080ce; not merged): one full trainable projector per condition (copies of the shared one at
# init; an image uses its input's condition's projector), with (a) condition-routed experts, (b) the single LoRA.
export HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 TSEMBED_EXP_CONDITION_PROJECTORS=2
common=(--suite suite-conflict --eval-split dev --seeds 0 --set schedule.steps=100 --set schedule.stage1_steps=50
  --set run.num_threads=1 --set run.progress=false --set "data.datasets=[TintSameEmoji,TintSameColour]"
  --set "model.moe.task_hints=[shape,colour]" --set model.moe.task_hint_init=8.0)
.venv/bin/tsembed ablate "${common[@]}" --variant tsembed_weight --out runs/conflict/pair/oracle-condproj > runs/conflict/pair/oracle-condproj.log 2>&1 &
.venv/bin/tsembed ablate "${common[@]}" --variant lora --out runs/conflict/pair/lora-condproj > runs/conflict/pair/lora-condproj.log 2>&1 &
wait
for v in oracle-condproj/seed0/tsembed_weight lora-condproj/seed0/lora; do
  .venv/bin/tsembed eval -m runs/conflict/pair/$v/model -s suite-conflict -d TintSameEmoji,TintSameColour --split dev \
    --no-progress -o runs/conflict/pair/$v/dev
done
