#!/usr/bin/env bash
# §9 pair diagnostics: TintSameEmoji + TintSameColour only, 100 steps (50 per task), dev, seed 0. Run from the repository root.
# The ablate runs with task hints fail at their own eval (it covers all six datasets); the eval lines below evaluate the pair.
export HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1
common=(--suite suite-conflict --eval-split dev --seeds 0 --set schedule.steps=100 --set schedule.stage1_steps=50
  --set run.num_threads=1 --set run.progress=false --set "data.datasets=[TintSameEmoji,TintSameColour]")
oracle=(--variant tsembed_weight --set "model.moe.task_hints=[shape,colour]" --set model.moe.task_hint_init=8.0)
.venv/bin/tsembed ablate "${common[@]}" --variant lora --out runs/conflict/pair/lora
.venv/bin/tsembed ablate "${common[@]}" "${oracle[@]}" --out runs/conflict/pair/oracle
.venv/bin/tsembed ablate "${common[@]}" "${oracle[@]}" --set optim.lr=3e-4 --out runs/conflict/pair/oracle-lr3e-4
.venv/bin/tsembed ablate "${common[@]}" "${oracle[@]}" --set data.homogeneous=false --out runs/conflict/pair/oracle-mixed
.venv/bin/tsembed ablate "${common[@]}" --set loss.guard_own_negatives=false --variant lora --out runs/conflict/pair/lora-ownneg
.venv/bin/tsembed ablate "${common[@]}" "${oracle[@]}" --set loss.guard_own_negatives=false --out runs/conflict/pair/oracle-ownneg
for v in oracle oracle-lr3e-4 oracle-mixed oracle-ownneg; do
  .venv/bin/tsembed eval -m runs/conflict/pair/$v/seed0/tsembed_weight/model -s suite-conflict -d TintSameEmoji,TintSameColour \
    --split dev -o runs/conflict/pair/$v/seed0/tsembed_weight/dev
done
python docs/results/conflict/scripts/collapse.py runs/conflict/pair/oracle/seed0/tsembed_weight/model colour
# Round 4: the uniformity term (Wang & Isola's weight 1, one value, not tuned)
.venv/bin/tsembed ablate "${common[@]}" --set loss.uniformity_weight=1.0 --variant lora --out runs/conflict/pair/lora-unif
.venv/bin/tsembed ablate "${common[@]}" "${oracle[@]}" --set loss.uniformity_weight=1.0 --out runs/conflict/pair/oracle-unif
for v in oracle-unif; do
  .venv/bin/tsembed eval -m runs/conflict/pair/$v/seed0/tsembed_weight/model -s suite-conflict -d TintSameEmoji,TintSameColour \
    --split dev -o runs/conflict/pair/$v/seed0/tsembed_weight/dev
done
# Round 5: the uniformity term together with the labelled trap exempt from the guard
.venv/bin/tsembed ablate "${common[@]}" --set loss.uniformity_weight=1.0 --set loss.guard_own_negatives=false --variant lora \
  --out runs/conflict/pair/lora-unif-ownneg
.venv/bin/tsembed ablate "${common[@]}" "${oracle[@]}" --set loss.uniformity_weight=1.0 --set loss.guard_own_negatives=false \
  --out runs/conflict/pair/oracle-unif-ownneg
.venv/bin/tsembed eval -m runs/conflict/pair/oracle-unif-ownneg/seed0/tsembed_weight/model -s suite-conflict \
  -d TintSameEmoji,TintSameColour --split dev -o runs/conflict/pair/oracle-unif-ownneg/seed0/tsembed_weight/dev
# Round 6: does the colour specialist need a trainable projector? (50 steps, TintSameColour alone)
HF_HUB_OFFLINE=1 .venv/bin/tsembed ablate --suite suite-conflict --eval-split dev --seeds 0 --variant lora --set schedule.steps=50 \
  --set schedule.stage1_steps=25 --set run.progress=false --set "data.datasets=[TintSameColour]" \
  --set model.backbone.train_projector=false --out runs/conflict/pair/specialist50-frozenproj
