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
# amendment 1: C with A1 as its fallback expert (run-fallback.sh), read where OUT/composed-fallback exists
FALLBACK_ARM = "C_fb"
FALLBACK_PAIRS = (("A1_lora", FALLBACK_ARM), ("A3_routed_text", FALLBACK_ARM), ("C", FALLBACK_ARM))
IND_DROP = -1.0  # amendment 1: C_fb - C on the original dev wording must not fall below this (mean)

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
    if arm == FALLBACK_ARM:
        return out / f"composed-fallback/seed{seed}/{where}"
    if where.startswith("para"):
        return out / f"reworded/seed{seed}/{arm}/{where}"
    return out / f"runs/wordings-s0/seed{seed}/{arm}/{where}"


def compare(runs: dict[str, dict], names: list[str], ood: set[str], kwargs: dict[str, Any]) -> dict[str, Any]:
    """Paired B - A intervals overall and per in-distribution condition."""
    result = {}
    ind = [n for n in names if n not in ood]
    for a, b in PAIRS + (FALLBACK_PAIRS if FALLBACK_ARM in runs else ()):
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


def versus_specialists(out: Path, runs: dict[str, dict], names: list[str], ood: set[str]) -> dict[str, Any]:
    """Each composed arm minus the condition's own specialist (S_<condition>, same seed) on that condition's
    in-distribution dataset(s), eval hit@1 points averaged over seeds (issue 26: none below -2)."""
    result: dict[str, Any] = {}
    for arm in ("C", FALLBACK_ARM):
        if not runs.get(arm):
            continue
        per: dict[str, float] = {}
        for name in (n for n in names if n not in ood):
            cond = condition_of(name)
            diffs = []
            for (_, seed), hits in runs[arm].items():
                path = hits_file(out / f"runs/wordings-s0/seed{seed}/S_{cond.replace('-', '_')}/eval")
                if path.is_file():
                    diffs.append(100 * (float(hits[name].hits.mean()) - float(load_hits(path)[name].hits.mean())))
            if diffs:
                per[cond] = round(statistics.fmean(diffs), 2)
        result[arm] = {"per_condition": per, "worst": min(per.items(), key=lambda kv: kv[1]) if per else None}
    return result


def routing(out: Path, suite_path: Path, composed: str = "composed") -> dict[str, Any]:
    """The composed models' query routing accuracy on the original dev split and on the reworded copies (with a
    fallback expert: also the share of queries it takes, per dataset, under ``fallback_share``)."""
    from tsembed.inference.compose import routing_accuracy
    from tsembed.model import TSEmbedModel

    entry: dict[str, Any] = {"original_dev_query_accuracy": [], "reworded_query_accuracy": [],
                             "reworded_per_dataset": [], "fallback_share": []}
    for seed in SEEDS:
        path = out / f"{composed}/seed{seed}/model"
        if not path.is_dir():
            continue
        model = TSEmbedModel.from_pretrained(path)
        spare = model.pilot_router.fallback
        original = routing_accuracy(model, suite_path, "dev")
        entry["original_dev_query_accuracy"].append(round(original["query_accuracy"], 4))
        per: dict[str, list[float]] = {}
        right = total = 0.0
        shares: dict[str, list[float]] = {}
        for where, report in [("dev", original)] + [(f"para{p}", routing_accuracy(model, out / f"para{p}", "dev"))
                                                    for p in COPIES]:
            for name, d in report["datasets"].items():
                if spare is not None:  # "routed" counts queries and positives; the share is of both
                    shares.setdefault(name, []).append(
                        round(100 * d["routed"][model.config.moe.expert_names[spare]] / d["inputs"], 1))
                if where == "dev":
                    continue
                per.setdefault(name, []).append(round(100 * d["query_accuracy"], 1))
                right += d["query_accuracy"] * d["inputs"] / 2
                total += d["inputs"] / 2
        entry["reworded_query_accuracy"].append(round(right / total, 4))
        entry["reworded_per_dataset"].append(per)
        if spare is not None:
            entry["fallback_share"].append(shares)  # per dataset: [original dev, copy 0, copy 1], % of inputs
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

    arms = ARMS + ((FALLBACK_ARM,) if (out / "composed-fallback").is_dir() else ())

    def read(where: str, suite_spec: Any, split_name: str, slot: int) -> dict[str, dict]:
        runs: dict[str, dict] = {arm: {} for arm in arms}
        for seed in SEEDS:
            for arm in arms:
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
        copies: dict[str, dict] = {arm: {} for arm in arms}
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
        if FALLBACK_ARM in arms:
            summary["routing_fallback"] = routing(out, suite.path, "composed-fallback")
            fb_vs_a1 = summary["reworded_copies"]["compare"].get(f"{FALLBACK_ARM} - A1_lora", {}).get("overall", {})
            fb_vs_c = summary["original_dev"]["compare"].get(f"{FALLBACK_ARM} - C", {}).get("overall", {})
            summary["amendment_1"] = {
                "C_fb_passes": not missing and fb_vs_a1.get("ci", [float("-inf")])[0] > LOWER_BOUND
                and fb_vs_c.get("mean", float("-inf")) >= IND_DROP,
                "text": "the lower bound of C_fb - A1 on the reworded dev copies > -1.0 and the mean of C_fb - C on "
                        "the original dev wording >= -1.0"}
    else:
        runs = read("eval", suite, "eval", 0)
        names = sorted(next(iter(runs["A1_lora"].values())))
        summary["arms"] = describe(runs, names, ood)
        summary["compare"] = compare(runs, names, ood, kwargs)
        summary["compare_ood"] = {f"{b} - {a}": paired_bootstrap(runs[a], runs[b], sorted(ood), **kwargs).to_dict()
                                  for a, b in PAIRS + (FALLBACK_PAIRS if FALLBACK_ARM in arms else ())
                                  if set(runs[a]) & set(runs[b])}
        summary["versus_specialists"] = versus_specialists(out, runs, names, ood)
        summary["one_wording"] = one_wording("eval")
    summary["missing"] = missing
    text = json.dumps(summary, indent=2) + "\n"
    target = HERE / ("summary-dev.json" if split == "dev" else "summary.json")
    atomic_write(target, lambda p: p.write_text(text))
    print(text)


if __name__ == "__main__":
    main()
