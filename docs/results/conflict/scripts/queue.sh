#!/usr/bin/env bash
# Work queue of docs/results/conflict: `queue.sh NAME` waits until no ablate writes under runs/conflict/NAME-wait
# (the earlier jobs of this lane), then runs the commands of its lane one after another.
set -x
export HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1
T=".venv/bin/tsembed"
B="--suite suite-conflict --eval-split dev --seeds 0 --set schedule.steps=300 --set schedule.stage1_steps=150 --set run.num_threads=1 --set run.progress=false"
HINTS="--set model.moe.task_hints=[identity,tone,shape,colour,object,colour-word] --set model.moe.task_hint_init=8.0"
spec() {  # one specialist LoRA per condition, 150 steps on its dataset alone
  $T ablate --suite suite-conflict --eval-split dev --seeds 0 --variant lora --set schedule.steps=150 \
    --set schedule.stage1_steps=75 --set run.num_threads=1 --set run.progress=false --set "data.datasets=[$1]" \
    --out runs/conflict/specialist-$1
}
wait_for() { while pgrep -f "$1" > /dev/null; do sleep 15; done; }
case "$1" in
  a)  # after the false-negative-guard lever
    wait_for "out runs/conflict/lever-noguard"
    $T ablate $B --variant tsembed_weight --set model.moe.router_input=text --out runs/conflict/lever-textrouter
    $T ablate $B --variant tsembed_weight $HINTS --out runs/conflict/lever-oracle ;;
  b)  # after the current specialist
    wait_for "out runs/conflict/specialist-"
    for d in TintSameColour TextSameObject TextSameColour; do spec $d; done
    $T ablate $B --variant tsembed_hardness --variant lora_hardness --mode hardness --out runs/conflict/lever-hardness ;;
esac
