"""Summarise compose amendment 3 (README.md): docs/results/compose/summary-amendment3.json.

Reads OUT/{R_text,R_mod,A1}/seed<s>/para<p>/hits.json (run-amendment3.sh) for training seeds 0-2 on the two
reworded dev copies, and measures each composed model's routing on the copies and on the original dev split. The
rule: R_mod is adopted if its mean hit@1 over both copies and seeds is higher than R_text's and its original dev
query routing accuracy stays >= 95 %. Paired intervals: the hierarchical bootstrap of `tsembed study` with the
copy in the suite-seed slot (episode clusters).

    OUT=runs/compose-a3 TEXT=... python docs/results/compose/summarize_amendment3.py

run from the root of the pinned worktree; it writes next to this file.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

from summarize import mean_std, overall

from tsembed.evaluation.bootstrap import paired_bootstrap
from tsembed.evaluation.hits import load_hits
from tsembed.experiments.study.spec import load_study
from tsembed.experiments.study.summary import with_clusters
from tsembed.fileio import atomic_write

HERE = Path(__file__).resolve().parent
SEEDS, COPIES, ARMS = (0, 1, 2), (0, 1), ("R_text", "R_mod", "A1")
ROUTING_FLOOR = 0.95


def hits_file(run: Path) -> Path:
    return run / "hits.json" if (run / "hits.json").is_file() else run / "dev/hits.json"


def main() -> None:
    out = Path(os.environ.get("OUT", "runs/compose-a3"))
    text_models = Path(os.environ["TEXT"])
    study = load_study(Path("docs/results/compose/study.yaml"))
    kwargs = {"resamples": study.bootstrap.resamples, "seed": study.bootstrap.seed, "level": study.bootstrap.level}
    runs: dict[str, dict[tuple[int, int], dict[str, Any]]] = {arm: {} for arm in ARMS}
    missing = []
    for p in COPIES:
        suite = replace(study.suites["conflict-s0"], name=f"para{p}", path=out / f"para{p}")
        for seed in SEEDS:
            for arm in ARMS:
                path = hits_file(out / f"{arm}/seed{seed}/para{p}")
                if path.is_file():
                    runs[arm][(p, seed)] = with_clusters(suite, "dev", load_hits(path))
                else:
                    missing.append(str(path))
    names = sorted(next(iter(runs["R_text"].values())))
    summary: dict[str, Any] = {"split": "dev (reworded copies)", "seeds": list(SEEDS), "copies": list(COPIES),
                               "missing": missing}
    for arm in ARMS:
        summary[arm] = {"overall": mean_std([overall(h, names) for h in runs[arm].values()]),
                        "per_dataset": {n: round(100 * sum(float(h[n].hits.mean()) for h in runs[arm].values())
                                                 / len(runs[arm]), 2) for n in names}}
    summary["compare"] = {f"{b} - {a}": paired_bootstrap(runs[a], runs[b], names, **kwargs).to_dict()
                          for a, b in (("R_text", "R_mod"), ("A1", "R_mod"), ("A1", "R_text"))
                          if set(runs[a]) & set(runs[b])}
    summary["routing"] = routing(out, text_models)
    mod_dev = summary["routing"]["R_mod"]["original_dev_query_accuracy"]
    adopted = (not missing and summary["R_mod"]["overall"]["mean"] > summary["R_text"]["overall"]["mean"]
               and min(mod_dev) >= ROUTING_FLOOR)
    summary["rule"] = {"R_mod_adopted": adopted, "routing_floor": ROUTING_FLOOR,
                       "text": "R_mod mean hit@1 over both copies and seeds 0-2 > R_text's, and its original dev "
                               "query routing accuracy >= 95 % at every seed"}
    text = json.dumps(summary, indent=2) + "\n"
    atomic_write(HERE / "summary-amendment3.json", lambda f: f.write_text(text))
    print(text)


def routing(out: Path, text_models: Path) -> dict[str, Any]:
    """Query routing accuracy of each composed model on the reworded copies and on the original dev split."""
    from tsembed.inference.compose import routing_accuracy
    from tsembed.model import TSEmbedModel

    study = load_study(Path("docs/results/compose/study.yaml"))
    result: dict[str, Any] = {}
    for arm, root in (("R_text", text_models), ("R_mod", out / "R_mod")):
        entry: dict[str, Any] = {"original_dev_query_accuracy": [], "reworded_query_accuracy": [],
                                 "reworded_per_dataset": []}
        for seed in SEEDS:
            model = TSEmbedModel.from_pretrained(root / f"seed{seed}/model")
            original = routing_accuracy(model, study.suites["conflict-s0"].path, "dev")
            entry["original_dev_query_accuracy"].append(round(original["query_accuracy"], 4))
            per = {}
            right = total = 0
            for p in COPIES:
                report = routing_accuracy(model, out / f"para{p}", "dev")
                for name, d in report["datasets"].items():
                    per.setdefault(name, []).append(round(100 * d["query_accuracy"], 1))
                    right += d["query_accuracy"] * d["inputs"] / 2
                    total += d["inputs"] / 2
            entry["reworded_query_accuracy"].append(round(right / total, 4))
            entry["reworded_per_dataset"].append(per)
        result[arm] = entry
    return result


if __name__ == "__main__":
    main()
