#!/usr/bin/env bash
# §10 eval comparison, assembled: the selected lora+proj vs lora80 (same total trainable parameters), seeds 0-2.
# The runs trained under projmix.sh's out dirs are hard-linked into one ablation layout under their §10 names,
# summarised (nothing is trained or re-evaluated) and turned into summary.json by conflict-summary.
set -ex
export HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 PYTHONPATH="${CODE:-src}"
T=".venv/bin/python -m tsembed"
R=runs/conflict
for s in 0 1 2; do
  mkdir -p $R/projmix-final/seed$s
  [ -d $R/projmix-final/seed$s/lora_proj ] || cp -al $R/projmix-lora/seed$s/lora $R/projmix-final/seed$s/lora_proj
done
[ -d $R/projmix-final/seed0/lora80 ] || cp -al $R/projmix-lora80/seed0/lora80 $R/projmix-final/seed0/lora80
[ -d $R/projmix-final/seed1/lora80 ] || cp -al $R/projmix-lora80b/seed1/lora80 $R/projmix-final/seed1/lora80
[ -d $R/projmix-final/seed2/lora80 ] || cp -al $R/projmix-lora80/seed2/lora80 $R/projmix-final/seed2/lora80
D="--derive lora_proj=lora:model.backbone.projector_experts=4 --derive lora80=lora:model.moe.rank=80"
for split in dev eval; do
  $T ablate --suite suite-conflict --eval-split $split --seeds 0 --seeds 1 --seeds 2 --variant lora_proj --variant lora80 \
    $D --set schedule.steps=300 --set schedule.stage1_steps=150 --summary-only --out $R/projmix-final
done
$T conflict-summary --ablation $R/projmix-final/ablation.json --conflict docs/results/conflict/gates/conflict-init.json \
  --tsembed lora_proj --lora lora80 --out docs/results/conflict/summary.json
