"""Summarise the wordings study (README.md's rules): docs/results/wordings/summary-dev.json, then summary.json.

Reads OUT/runs/wordings-s0/seed<s>/<arm>/<split>/hits.json (the study's runs), the composed models'
OUT/composed/seed<s>/{<split>,para<p>} and, on dev, OUT/reworded/seed<s>/<arm>/para<p> (run.sh). Paired intervals
are the hierarchical bootstrap of `tsembed study` (episode clusters), with the reworded copy in the suite-seed slot
on the copies. The one-wording arms (rule 4) are read from the committed claim and compose summaries: their runs
were not kept, so they pair with these by training seed on overall hit@1 only.

    OUT=runs/wordings python docs/results/wordings/summarize.py [--split eval]

run from the root of the pinned worktree (the suite resolves there); it writes next to this file.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
from dataclasses import replace
from pathlib import Path
from typing import Any

from tsembed.evaluation.bootstrap import paired_bootstrap
from tsembed.evaluation.hits import load_hits
from tsembed.experiments.study.selection import condition_of
from tsembed.experiments.study.spec import load_study
from tsembed.experiments.study.summary import with_clusters
from tsembed.fileio import atomic_write

HERE = Path(__file__).resolve().parent
RESULTS = HERE.parent
SEEDS, COPIES = (0, 1, 2), (0, 1)
ARMS = ("C", "A1_lora", "A3_routed_text")
ROUTING_FLOOR, LOWER_BOUND = 0.90, -1.0
PAIRS = (("A1_lora", "C"), ("A3_routed_text", "C"), ("A1_lora", "A3_routed_text"))

_spec = importlib.util.spec_from_file_location("compose_summarize", RESULTS / "compose/summarize.py")
compose_summarize = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(compose_summarize)
mean_std, overall = compose_summarize.mean_std, compose_summarize.overall


def hits_file(run: Path) -> Path:
    for path in (run / "hits.json", run / "dev/hits.json", run / "eval/hits.json"):
        if path.is_file():
            return path
    return run / "hits.json"


def arm_dir(out: Path, arm: str, seed: int, where: str) -> Path:
    """Where an arm's evaluation on ``where`` (a split, or para<p>) sits."""
    if arm == "C":
        return out / f"composed/seed{seed}/{where}"
    if where.startswith("para"):
        return out / f"reworded/seed{seed}/{arm}/{where}"
    return out / f"runs/wordings-s0/seed{seed}/{arm}/{where}"


def compare(runs: dict[str, dict], names: list[str], ood: set[str], kwargs: dict[str, Any]) -> dict[str, Any]:
    """Paired B - A intervals overall and per in-distribution condition."""
    result = {}
    ind = [n for n in names if n not in ood]
    for a, b in PAIRS:
        if not (set(runs[a]) & set(runs[b])):
            continue
        entry = {"overall": paired_bootstrap(runs[a], runs[b], names, **kwargs).to_dict(), "per_condition": {}}
        for cond in sorted({c for c in map(condition_of, ind) if c}):
            members = [n for n in ind if condition_of(n) == cond]
            entry["per_condition"][cond] = paired_bootstrap(runs[a], runs[b], members, **kwargs).to_dict()
        result[f"{b} - {a}"] = entry
    return result


def describe(runs: dict[str, dict], names: list[str], ood: set[str]) -> dict[str, Any]:
    out = {}
    for arm, by_run in runs.items():
        if not by_run:
            continue
        ind = [n for n in names if n not in ood]
        out[arm] = {"overall": mean_std([overall(h, names) for h in by_run.values()]),
                    "IND": mean_std([overall(h, ind) for h in by_run.values()]),
                    "per_dataset": {n: round(100 * statistics.fmean(float(h[n].hits.mean()) for h in by_run.values()),
                                             2) for n in names}}
        if ood:
            out[arm]["OOD"] = mean_std([overall(h, sorted(ood)) for h in by_run.values()])
        out[arm]["per_seed_overall"] = {f"{k[0]}/{k[1]}": round(overall(h, names), 2) for k, h in by_run.items()}
    return out


def routing(out: Path, suite_path: Path) -> dict[str, Any]:
    """The composed models' query routing accuracy on the original dev split and on the reworded copies."""
    from tsembed.inference.compose import routing_accuracy
    from tsembed.model import TSEmbedModel

    entry: dict[str, Any] = {"original_dev_query_accuracy": [], "reworded_query_accuracy": [],
                             "reworded_per_dataset": []}
    for seed in SEEDS:
        path = out / f"composed/seed{seed}/model"
        if not path.is_dir():
            continue
        model = TSEmbedModel.from_pretrained(path)
        entry["original_dev_query_accuracy"].append(round(routing_accuracy(model, suite_path, "dev")["query_accuracy"],
                                                          4))
        per: dict[str, list[float]] = {}
        right = total = 0.0
        for p in COPIES:
            for name, d in routing_accuracy(model, out / f"para{p}", "dev")["datasets"].items():
                per.setdefault(name, []).append(round(100 * d["query_accuracy"], 1))
                right += d["query_accuracy"] * d["inputs"] / 2
                total += d["inputs"] / 2
        entry["reworded_query_accuracy"].append(round(right / total, 4))
        entry["reworded_per_dataset"].append(per)
    return entry


def one_wording(split: str) -> dict[str, Any]:
    """The same arms trained on one wording (conflict-s0, seeds 0-2), from the committed summaries."""
    if split == "dev":
        a3 = json.loads((RESULTS / "compose/summary-amendment3.json").read_text())
        dev = json.loads((RESULTS / "compose/summary-dev.json").read_text())
        return {"reworded_copies": {"C": a3["R_text"]["overall"], "A1_lora": a3["A1"]["overall"]},
                "original_dev": {"C": dev["composed_overall"], "A1_lora": dev["joint_lora_overall"],
                                 "A3_routed_text": dev["joint_tsembed_overall"]}}
    claim = json.loads((RESULTS / "claim/summary.json").read_text())["stages"]["eval"]["families"]["conflict"]
    compose = json.loads((RESULTS / "compose/summary.json").read_text())
    result: dict[str, Any] = {"C": compose["composed_overall"]}
    for arm in ("A1_lora", "A3_routed_text"):
        entry = claim["variants"][arm]
        # the claim's eval lists conflict-s0's seeds 0-4 first, then conflict-s1's
        result[arm] = {"per_seed_overall": [round(v, 2) for v in entry["overall"]["values"][: len(SEEDS)]],
                       "seeds": entry["seeds"][: len(SEEDS)]}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--split", default="dev", choices=("dev", "eval"))
    split = parser.parse_args().split
    out = Path(os.environ.get("OUT", "runs/wordings"))
    study = load_study(HERE / "study.yaml")
    suite = study.suites["wordings-s0"]
    kwargs = {"resamples": study.bootstrap.resamples, "seed": study.bootstrap.seed, "level": study.bootstrap.level}
    from tsembed.data.suite import load_suite

    manifest = load_suite(suite.path)
    ood = {n for n, d in manifest.datasets.items() if d.ood}
    missing: list[str] = []

    def read(where: str, suite_spec: Any, split_name: str, slot: int) -> dict[str, dict]:
        runs: dict[str, dict] = {arm: {} for arm in ARMS}
        for seed in SEEDS:
            for arm in ARMS:
                path = hits_file(arm_dir(out, arm, seed, where))
                if path.is_file():
                    runs[arm][(slot, seed)] = with_clusters(suite_spec, split_name, load_hits(path))
                else:
                    missing.append(str(path))
        return runs

    summary: dict[str, Any] = {"split": split, "suite": "wordings-s0", "seeds": list(SEEDS)}
    if split == "dev":
        original = read("dev", suite, "dev", 0)
        names = sorted(next(iter(original["A1_lora"].values())))
        copies: dict[str, dict] = {arm: {} for arm in ARMS}
        for p in COPIES:
            para = replace(suite, name=f"para{p}", path=out / f"para{p}")
            for arm, runs in read(f"para{p}", para, "dev", p).items():
                copies[arm].update(runs)
        summary["original_dev"] = {"arms": describe(original, names, set()),
                                   "compare": compare(original, names, ood, kwargs)}
        summary["reworded_copies"] = {"arms": describe(copies, names, set()),
                                      "compare": compare(copies, names, ood, kwargs)}
        summary["routing"] = routing(out, suite.path)
        summary["one_wording"] = one_wording("dev")
        reworded = summary["routing"]["reworded_query_accuracy"]
        c_vs_a1 = summary["reworded_copies"]["compare"].get("C - A1_lora", {}).get("overall", {})
        passed = bool(reworded) and statistics.fmean(reworded) >= ROUTING_FLOOR and \
            c_vs_a1.get("ci", [float("-inf")])[0] > LOWER_BOUND
        summary["rule_1"] = {"C_passes": passed and not missing, "routing_floor": ROUTING_FLOOR,
                             "lower_bound": LOWER_BOUND,
                             "text": "C's mean query routing accuracy on the reworded dev copies >= 90 % and the "
                                     "lower bound of C - A1 on the copies > -1.0"}
    else:
        runs = read("eval", suite, "eval", 0)
        names = sorted(next(iter(runs["A1_lora"].values())))
        summary["arms"] = describe(runs, names, ood)
        summary["compare"] = compare(runs, names, ood, kwargs)
        summary["compare_ood"] = {f"{b} - {a}": paired_bootstrap(runs[a], runs[b], sorted(ood), **kwargs).to_dict()
                                  for a, b in PAIRS if set(runs[a]) & set(runs[b])}
        summary["one_wording"] = one_wording("eval")
    summary["missing"] = missing
    text = json.dumps(summary, indent=2) + "\n"
    target = HERE / ("summary-dev.json" if split == "dev" else "summary.json")
    atomic_write(target, lambda p: p.write_text(text))
    print(text)


if __name__ == "__main__":
    main()
