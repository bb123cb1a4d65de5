"""§10 tables: hit@1 per seed and dataset of the projector-expert runs and their references, for one split.

Usage: python docs/results/conflict/scripts/projmix_table.py [dev|eval]
"""
import json
import statistics
import sys
from pathlib import Path

split = sys.argv[1] if len(sys.argv) > 1 else "dev"
name = "results.json" if split == "eval" else f"results-{split}.json"
R = Path("runs/conflict")
MODELS = {  # model → seed → run directory
    "reference (TSEmbed, router_input=text)": {0: R / "lever-textrouter/seed0/tsembed_weight", 1: R / "final/seed1/tsembed_weight",
                                               2: R / "final/seed2/tsembed_weight"},
    "lora r32 (§4/§6)": {0: R / "main/seed0/lora", 1: R / "final/seed1/lora", 2: R / "final/seed2/lora"},
    "tsembed+proj": {s: R / f"projmix-tsembed/seed{s}/tsembed_weight" for s in range(3)},
    "lora+proj": {s: R / f"projmix-lora/seed{s}/lora" for s in range(3)},
    "lora80": {0: R / "projmix-lora80/seed0/lora80", 1: R / "projmix-lora80b/seed1/lora80",
               2: R / "projmix-lora80/seed2/lora80"},
    "lora320 (a mistaken baseline run: 4x the parameters)": {0: R / "projmix-lora320/seed0/lora",
                                                             1: R / "projmix-lora320b/seed1/lora"},
}
if split == "eval":
    MODELS["lora r32 (§4/§6)"][0] = R / "final/seed0/lora"
    MODELS["reference (TSEmbed, router_input=text)"][0] = R / "final/seed0/tsembed_weight"
table = {}
for model, runs in MODELS.items():
    for seed, run in runs.items():
        path = run / name
        if path.is_file():
            record = json.loads(path.read_text())
            row = {"overall": record["aggregates"]["overall"]["hit@1"] * 100}
            row |= {d: m["hit@1"] * 100 for d, m in record["datasets"].items()}
            table.setdefault(model, {})[seed] = row
columns = None
for model, seeds in table.items():
    columns = columns or list(next(iter(seeds.values())))
    print(f"\n{model}")
    print("seed | " + " | ".join(columns))
    for seed, row in sorted(seeds.items()):
        print(f"{seed} | " + " | ".join(f"{row.get(c, float('nan')):.1f}" for c in columns))
    if len(seeds) > 1:
        print("mean | " + " | ".join(f"{statistics.mean(r[c] for r in seeds.values() if c in r):.1f}" for c in columns))
        print("std | " + " | ".join(f"{statistics.stdev(r[c] for r in seeds.values() if c in r):.1f}" for c in columns))
print(json.dumps({m: {str(s): round(r["overall"], 2) for s, r in v.items()} for m, v in table.items()}))
