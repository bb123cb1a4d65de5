"""Summarise the compose study (issue 26): docs/results/compose/summary.{json,md}.

Reads, for training seeds 0-2 on conflict-s0: the composed models' hits (OUT/composed/seed<s>/<split>/hits.json),
the specialists' (OUT/runs/conflict-s0/seed<s>/S_<c>/<split>/hits.json), the claim study's joint references
(CLAIM/runs/conflict-s0/seed<s>/{A1_lora,A3_routed_text}/<split>/hits.json) and, on eval, the added-expert curve
(OUT/scaling/seed0/<n>/eval). Paired differences use the hierarchical bootstrap of `tsembed study` (episode clusters).

    OUT=runs/compose CLAIM=../wt-run/runs/claim python docs/results/compose/summarize.py [--split eval]

run from the root of the pinned worktree (the study's suites resolve there); it writes next to this file.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path
from typing import Any

import numpy as np

from tsembed.evaluation.bootstrap import paired_bootstrap
from tsembed.evaluation.hits import load_hits
from tsembed.experiments.study.selection import condition_of
from tsembed.experiments.study.spec import load_study
from tsembed.experiments.study.summary import with_clusters
from tsembed.fileio import atomic_write

HERE = Path(__file__).resolve().parent
SEEDS = (0, 1, 2)
CONDITIONS = {"identity": "identity", "tone": "tone", "shape": "shape", "colour": "colour", "object": "object",
              "colour_word": "colour-word"}
#: training minutes per specialist are read from its metrics; steps are the study's
STEPS_PER_SPECIALIST = 50


def overall(hits: dict[str, Any], names: list[str] | None = None) -> float:
    """MMEB's overall: the mean over datasets of the mean hit (points)."""
    names = names or list(hits)
    return 100 * statistics.fmean(float(np.mean(hits[n].hits)) for n in names)


def by_condition(hits: dict[str, Any], ind: set[str]) -> dict[str, float]:
    groups: dict[str, list[str]] = {}
    for name in hits:
        if name in ind:
            groups.setdefault(condition_of(name) or name, []).append(name)
    return {cond: overall(hits, names) for cond, names in groups.items()}


def mean_std(values: list[float]) -> dict[str, float]:
    return {"mean": round(statistics.fmean(values), 2), "std": round(statistics.stdev(values), 2) if len(values) > 1
            else 0.0, "runs": len(values)}


def claim_hits(claim: Path, seed: int, variant: str, split: str) -> Path:
    """A claim-study run's hits: ``<split>/hits.json``, or at the run's top level, where the claim's pinned commit
    wrote the eval split's."""
    run = claim / f"runs/conflict-s0/seed{seed}/{variant}"
    nested = run / split / "hits.json"
    if nested.is_file() or split != "eval":
        return nested
    results = run / "results.json"
    if results.is_file() and json.loads(results.read_text()).get("split") == "eval":  # the run record
        return run / "hits.json"
    return nested


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--split", default="eval")
    args = parser.parse_args()
    out = Path(os.environ.get("OUT", "runs/compose"))
    claim = Path(os.environ.get("CLAIM", "runs/claim"))
    study = load_study(Path("docs/results/compose/study.yaml"))  # the pinned worktree's: its suites are there
    suite = study.suites["conflict-s0"]
    split = args.split

    def hits(path: Path) -> dict[str, Any] | None:
        return with_clusters(suite, split, load_hits(path)) if path.is_file() else None

    runs: dict[str, dict[tuple[int, int], dict[str, Any]]] = {"composed": {}, "A1_lora": {}, "A3_routed_text": {}}
    specialists: dict[str, dict[tuple[int, int], dict[str, Any]]] = {c: {} for c in CONDITIONS}
    missing = []
    for seed in SEEDS:
        paths = {"composed": out / f"composed/seed{seed}/{split}/hits.json",
                 "A1_lora": claim_hits(claim, seed, "A1_lora", split),
                 "A3_routed_text": claim_hits(claim, seed, "A3_routed_text", split)}
        for c in CONDITIONS:
            paths[f"S_{c}"] = out / f"runs/conflict-s0/seed{seed}/S_{c}/{split}/hits.json"
        for name, path in paths.items():
            loaded = hits(path)
            if loaded is None:
                missing.append(str(path))
            elif name.startswith("S_"):
                specialists[name[2:]][(0, seed)] = loaded
            else:
                runs[name][(0, seed)] = loaded
    first = next(iter(runs["composed"].values()), None)
    if first is None:
        raise SystemExit(f"no composed run has {split} hits yet; missing: {missing[:3]}")
    names = list(first)
    from tsembed.data.suite import load_suite

    manifest = load_suite(suite.path)
    ind = {n for n in names if not manifest.datasets[n].ood}
    kwargs = {"resamples": study.bootstrap.resamples, "seed": study.bootstrap.seed, "level": study.bootstrap.level}

    summary: dict[str, Any] = {"split": split, "suite": "conflict-s0", "seeds": sorted(s for _, s in runs["composed"]),
                               "missing": missing}
    for key, label in (("composed", "composed_overall"), ("A3_routed_text", "joint_tsembed_overall"),
                       ("A1_lora", "joint_lora_overall")):
        values = [overall(h, names) for h in runs[key].values()]
        summary[label] = mean_std(values) if values else None
        summary[label.replace("overall", "ind")] = (mean_std([overall(h, sorted(ind)) for h in runs[key].values()])
                                                    if values else None)
    summary["compare"] = {}
    for ref in ("A1_lora", "A3_routed_text"):
        shared = sorted(set(runs["composed"]) & set(runs[ref]))
        if shared:
            a, b = {k: runs[ref][k] for k in shared}, {k: runs["composed"][k] for k in shared}
            entry = {"runs": len(shared), "overall": paired_bootstrap(a, b, names, **kwargs).to_dict(),
                     "per_condition": {}}
            for cond in sorted({condition_of(n) for n in ind}):
                members = [n for n in sorted(ind) if condition_of(n) == cond]
                entry["per_condition"][cond] = paired_bootstrap(a, b, members, **kwargs).to_dict()
            summary["compare"][f"composed - {ref}"] = entry
    # each condition against its own specialist (the specialist's condition only)
    versus = {}
    for c, cond in CONDITIONS.items():
        shared = sorted(set(runs["composed"]) & set(specialists[c]))
        members = [n for n in sorted(ind) if condition_of(n) == cond]
        if shared and members:
            a = {k: specialists[c][k] for k in shared}
            b = {k: runs["composed"][k] for k in shared}
            versus[cond] = {"specialist": mean_std([overall(specialists[c][k], members) for k in shared]),
                            "composed": mean_std([overall(runs["composed"][k], members) for k in shared]),
                            "difference": paired_bootstrap(a, b, members, **kwargs).to_dict()}
    summary["composed_vs_own_specialist"] = versus
    summary["worst_condition_vs_specialist"] = (min((v["difference"]["mean"], k) for k, v in versus.items())
                                                if versus else None)
    routing = []
    for seed in SEEDS:
        report = out / f"composed/seed{seed}/model/compose.json"
        if report.is_file():
            routing.append(json.loads(report.read_text()).get("routing_accuracy", {}))
    # amendment 2: the router decides the queries (their candidates follow them); all inputs reported beside
    summary["routing_accuracy_dev"] = (mean_std([100 * r["query_accuracy"] for r in routing
                                                 if r.get("query_accuracy") is not None]) if routing else None)
    summary["routing_accuracy_dev_all_inputs"] = (mean_std([100 * r["accuracy"] for r in routing
                                                            if r.get("accuracy") is not None]) if routing else None)
    summary["routing_dev_per_seed"] = [{n: round(100 * d["query_accuracy"], 1) for n, d in r["datasets"].items()
                                        if d.get("query_accuracy") is not None} for r in routing]
    if split == "eval":
        summary["scaling"] = scaling(out / "scaling/seed0", suite, names, ind)
        summary["old_tasks_unchanged"] = summary["scaling"].get("old_tasks_unchanged") if summary["scaling"] else None
    text = json.dumps(summary, indent=2) + "\n"
    atomic_write(HERE / f"summary-{split}.json" if split != "eval" else HERE / "summary.json",
                 lambda p: p.write_text(text))
    print(text)


def scaling(root: Path, suite: Any, names: list[str], ind: set[str]) -> dict[str, Any] | None:
    """Hit@1 after each added expert, and whether each addition left the old conditions' hits unchanged."""
    points, unchanged, previous = [], True, None
    order = list(CONDITIONS.values())
    for n in range(2, len(order) + 1):
        path = root / f"{n}/eval/hits.json"
        if not path.is_file():
            break
        hits = load_hits(path)
        conds = set(order[:n])
        covered = [x for x in names if condition_of(x) in conds]
        point = {"experts": n, "conditions": order[:n], "training_steps": n * STEPS_PER_SPECIALIST,
                 "overall_covered": round(overall(hits, covered), 2), "overall_all": round(overall(hits, names), 2)}
        if previous is not None:
            old = [x for x in names if condition_of(x) in set(order[: n - 1])]
            same = all(np.array_equal(hits[x].hits, previous[x].hits) for x in old)
            point["old_conditions_hits_identical"] = same
            unchanged = unchanged and same
        points.append(point)
        previous = hits
    return {"points": points, "old_tasks_unchanged": unchanged} if points else None


if __name__ == "__main__":
    main()
