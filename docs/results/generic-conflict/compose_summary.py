"""Issue 26's headline (README.md): compose-summary.json from the study's own summary and records.

    python docs/results/generic-conflict/compose_summary.py runs/generic-conflict            # amendment 1
    python docs/results/generic-conflict/compose_summary.py runs/generic-conflict amendment2 # C_query_pilots, eval2
    python docs/results/generic-conflict/compose_summary.py runs/generic-conflict amendment3 # the fresh build

run from the root of the worktree the study ran in, after `tsembed study summarize`; writes next to this file.
Keys as issue 26 asks (`composed_overall`, `joint_tsembed_overall`, `joint_lora_overall`, `routing_accuracy_dev`,
`old_tasks_unchanged`, `seeds`), plus the paired differences and each condition's gap to its specialist (R1-R3).
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

from tsembed.experiments.study.selection import condition_of
from tsembed.experiments.study.spec import load_study, specialist_dataset
from tsembed.fileio import atomic_write

HERE = Path(__file__).resolve().parent
LORA = "A1_lora"
#: reading -> (composed variant, stage, joint TSEmbed arm (None: the selection's), output file)
READINGS = {"amendment1": ("C_composed", "eval", None, "compose-summary.json"),
            "amendment2": ("C_query_pilots", "eval2", None, "compose-summary-amendment2.json"),
            "amendment3": ("C_query_pilots", "eval3", "A4_query_targets", "compose-summary-amendment3.json")}


def main(out: Path, reading: str = "amendment1") -> dict:
    COMPOSED, STAGE, joint, name = READINGS[reading]  # noqa: N806 - the names the amendment-1 reading was written with
    summary = json.loads((out / "summary.json").read_text())
    joint = joint or summary["selection"]["winner"]
    table = summary["stages"][STAGE]["families"]["generic"]["variants"]
    compare = {(c["a"], c["b"]): c for c in summary["compare"] if c["stage"] == STAGE}
    study = load_study(Path(summary["study"]))
    records = sorted(p for suite in study.stage(STAGE).suites
                     for p in (out / "runs" / suite).glob(f"seed*/{COMPOSED}/results.json"))
    routing = [json.loads(p.read_text())["routing_dev"]["query_accuracy"] for p in records]
    gaps = {}  # C − S at the specialist's own condition (R2)
    for (a, b), entry in compare.items():
        dataset = specialist_dataset(study.variants, a) if b == COMPOSED else None
        if dataset is not None and "per_condition" in entry:
            gaps[condition_of(dataset)] = entry["per_condition"][condition_of(dataset)]
    headline = {
        "study": summary["study"], "commit": summary["commit"], "stage": STAGE,
        "missing_runs": len(compare[(joint, COMPOSED)].get("missing", [])),  # pairs of this reading not yet run
        "composed_overall": {k: table[COMPOSED]["overall"][k] for k in ("mean", "std")},
        "joint_tsembed": joint,
        "joint_tsembed_overall": {k: table[joint]["overall"][k] for k in ("mean", "std")},
        "joint_lora_overall": {k: table[LORA]["overall"][k] for k in ("mean", "std")},
        "composed_minus_joint_tsembed": compare[(joint, COMPOSED)].get("overall"),
        "composed_minus_joint_lora": compare[(LORA, COMPOSED)].get("overall"),
        "composed_minus_own_specialist": gaps,
        "routing_accuracy_dev": round(statistics.fmean(routing), 4) if routing else None,
        "routing_accuracy_dev_per_run": routing,
        "old_tasks_unchanged": True,  # compose --add keeps old inputs' vectors bit-identical: tested, not measured here
        "seeds": sorted({int(p.parent.parent.name.removeprefix("seed")) for p in records}),
        "suites": sorted({p.parent.parent.parent.name for p in records}),
        "collapsed_runs": sum(v.get("collapsed_runs", 0) for v in table.values()),
    }
    text = json.dumps(headline, indent=2) + "\n"
    atomic_write(HERE / name, lambda p: p.write_text(text))
    return headline


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1]), *sys.argv[2:3]), indent=2))
