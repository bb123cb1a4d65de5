"""A study's tables and ``summary.json``, from its finished runs alone (nothing is trained).

Per stage and suite family: hit@1 mean ± std per group over every (suite, seed) run (the ablation's table).
Per ``compare`` entry: the paired difference b − a, overall and per condition, with its hierarchical bootstrap
interval over suite seeds (the family's suites), training seeds and query clusters
(``tsembed.evaluation.bootstrap``). Runs still missing are named, never silently left out.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from tsembed.errors import DataError
from tsembed.evaluation.bootstrap import paired_bootstrap
from tsembed.evaluation.hits import DatasetHits, load_hits
from tsembed.experiments.ablation import markdown_table, summarize
from tsembed.experiments.study.run import STATE, RunTask, gate, load_records, plan_stage, selection
from tsembed.experiments.study.selection import condition_of
from tsembed.experiments.study.spec import StageSpec, Study, SuiteSpec
from tsembed.fileio import atomic_write
from tsembed.health import run_collapsed

SUMMARY = "summary"


def families(study: Study, stage: StageSpec) -> dict[str, list[str]]:
    """Family -> the stage's suites of that family (its suite seeds), in stage order."""
    out: dict[str, list[str]] = {}
    for suite in stage.suites:
        out.setdefault(study.suites[suite].family, []).append(suite)
    return out


def with_clusters(suite: SuiteSpec, split: str, hits: dict[str, DatasetHits]) -> dict[str, DatasetHits]:
    """``episode``: rows, in any dataset of the suite, that rank the same gallery of candidate images are one
    episode and are drawn together (the conflict suite: one episode is asked by every dataset of its stream, e.g.
    both sides of a pair and their reworded and text-query variants). Rows already carrying clusters, and rows
    whose candidates have no image, are left as they are; ``row``: nothing changes."""
    if suite.clusters != "episode":
        return hits
    from tsembed.evaluation.loading import load_eval_set
    from tsembed.evaluation.sources import resolve_eval_sets

    out = dict(hits)
    for spec in resolve_eval_sets(suite.path, [n for n in hits if hits[n].clusters is None], split):
        rows = load_eval_set(spec, check_images=False).rows
        if len(rows) != len(hits[spec.name]):
            raise DataError(f"suite {suite.name}, {spec.name}: {len(rows)} {split} rows, but the run's hits have "
                            f"{len(hits[spec.name])}; was the suite rebuilt after the run?")
        ids = []
        for i, row in enumerate(rows):
            gallery = sorted(row.tgt_img_path)
            ids.append(f"{spec.name}:{i}" if not all(gallery) else
                       "episode:" + hashlib.sha1("\0".join(gallery).encode()).hexdigest()[:16])
        out[spec.name] = DatasetHits(hits[spec.name].hits, tuple(ids))
    return out


def _task_hits(task: RunTask, suite: SuiteSpec) -> dict[str, DatasetHits]:
    return with_clusters(suite, task.split, load_hits(task.hits))


def compare_entry(study: Study, out: Path, stage: StageSpec, a: str, b: str, family: str,
                  suites: list[str]) -> dict[str, Any]:
    boot = study.bootstrap
    tasks = {(t.variant.name, t.suite, t.seed): t for t in plan_stage(study, out, stage, {})}
    runs: dict[str, dict[tuple[int, int], dict[str, DatasetHits]]] = {a: {}, b: {}}
    missing, collapsed = [], []
    for i, suite in enumerate(suites):
        for seed in stage.seeds:
            pair = [tasks.get((name, suite, seed)) for name in (a, b)]
            if not all(t is not None and t.done() for t in pair):
                missing.append(f"{suite} seed {seed}")
                continue
            sick = [t.variant.name for t in pair if t is not None and run_collapsed(json.loads(t.results.read_text()))]
            if sick:  # a comparison against a collapsed model means nothing: named, never averaged in
                collapsed.append(f"{suite} seed {seed} ({', '.join(sick)} collapsed)")
                continue
            for name, task in zip((a, b), pair, strict=True):
                runs[name][(i, seed)] = _task_hits(task, study.suites[suite])
    entry: dict[str, Any] = {"a": a, "b": b, "stage": stage.name, "family": family, "suites": suites,
                             "runs": len(runs[a]), "missing": missing, "collapsed": collapsed}
    if not runs[a]:
        return entry
    kwargs = {"resamples": boot.resamples, "seed": boot.seed, "level": boot.level}
    names = list(next(iter(runs[a].values())))
    entry["overall"] = paired_bootstrap(runs[a], runs[b], names, **kwargs).to_dict()
    entry["per_run"] = [{"suite": suites[i], "seed": seed, a: _overall(runs[a][(i, seed)], names),
                         b: _overall(runs[b][(i, seed)], names)} for i, seed in sorted(runs[a])]
    by_condition: dict[str, list[str]] = {}
    for name in names:
        cond = condition_of(name)
        if cond is not None:
            by_condition.setdefault(cond, []).append(name)
    entry["per_condition"] = {cond: paired_bootstrap(runs[a], runs[b], members, **kwargs).to_dict()
                              for cond, members in by_condition.items()}
    return entry


def _overall(hits: dict[str, DatasetHits], names: list[str]) -> float:
    """One run's overall hit@1 in points: the mean over datasets of each dataset's hit rate (the bootstrap's
    point estimate is the mean of these differences)."""
    return round(100 * sum(float(hits[n].hits.mean()) for n in names) / len(names), 4)


def _ci(cell: dict[str, Any]) -> str:
    lo, hi = cell["ci"]
    return f"{cell['mean']:+.2f} [{lo:+.2f}, {hi:+.2f}]"


def summarize_study(study: Study, out: Path) -> dict[str, Any]:
    """Write ``OUT/summary.json`` and ``OUT/summary.md``; returns the summary."""
    out = Path(out)
    state = json.loads((out / STATE).read_text()) if (out / STATE).is_file() else {}
    try:
        chosen = selection(study, out) if study.selection is not None else None
    except Exception as exc:  # noqa: BLE001 - reported in the summary; the rest still summarises
        chosen, selection_error = None, str(exc)
    else:
        selection_error = None
    summary: dict[str, Any] = {
        "name": study.name, "study": str(study.path.relative_to(study.root)) if study.path.is_relative_to(study.root)
        else str(study.path), "study_sha256": study.sha256(), "commit": state.get("commit"),
        "bootstrap": {"resamples": study.bootstrap.resamples, "seed": study.bootstrap.seed,
                      "level": study.bootstrap.level},
        "selection": chosen.to_dict() if chosen else ({"error": selection_error} if selection_error else None),
        "stages": {}, "compare": [], "missing_runs": 0,
    }
    reading = None
    if study.gate is not None:
        try:
            reading = gate(study, out)
        except Exception as exc:  # noqa: BLE001 - reported in the summary; the rest still summarises
            summary["gate"] = {"error": str(exc)}
        else:
            summary["gate"] = reading.to_dict()
    lines = [f"# Study {study.name}", "", study.description.strip(), "",
             f"Study file `{summary['study']}`, commit `{summary['commit']}`.", ""]
    for stage in study.stages:
        if stage.selected and chosen is None:
            summary["stages"][stage.name] = {"split": stage.split, "error": "no selection yet"}
            continue
        names = list(dict.fromkeys([*stage.variants, *([chosen.winner] if stage.selected else [])]))
        block: dict[str, Any] = {"split": stage.split, "variants": names, "families": {}}
        for family, suites in families(study, stage).items():
            records = load_records(study, out, stage, names)
            missing = [f"{v} on {s}, seed {n}" for s in suites for n in stage.seeds for v in names
                       if (v, s, n) not in records]
            family_records = [r for (v, s, n), r in records.items() if s in suites]
            table = summarize(family_records)
            block["families"][family] = {"suites": suites, "variants": table, "missing": missing}
            summary["missing_runs"] += len(missing)
            lines += [f"## Stage {stage.name} ({stage.split}), {family}", "", markdown_table(table) if table else
                      "No finished run yet.\n"]
            if missing:
                lines += [f"Missing ({len(missing)}): " + "; ".join(missing), ""]
        summary["stages"][stage.name] = block
    if reading is not None:
        lines += reading.markdown()
    if chosen is not None:
        lines += ["## Selection", "", f"Rule: {chosen.rule or '(none written)'}", "",
                  "| candidate | metric | worst condition − reference | eligible |", "|---|---:|---:|---|",
                  *[f"| {n} | {c['metric']:.2f} | {c['worst_condition']} {c['worst_diff']:+.2f} | {c['eligible']} |"
                    for n, c in chosen.table.items()],
                  "", f"Selected: **{chosen.winner}**" + (" (fallback: no candidate qualified)"
                                                         if chosen.fallback_used else ""), ""]
    for spec in study.compare:
        stage = study.stage(spec.stage)
        if stage.selected and chosen is None:
            continue
        a, b = ((chosen.winner if name == "selected" else name) for name in (spec.a, spec.b))
        for family, suites in families(study, stage).items():
            entry = compare_entry(study, out, stage, a, b, family, suites)
            summary["compare"].append(entry)
            lines += [f"## {b} − {a}, stage {stage.name}, {family} ({entry['runs']} paired runs, "
                      f"{100 * study.bootstrap.level:g} % intervals)", ""]
            if "overall" in entry:
                lines += ["| | difference (points) |", "|---|---:|", f"| overall | {_ci(entry['overall'])} |",
                          *[f"| {c} | {_ci(v)} |" for c, v in entry["per_condition"].items()], ""]
            if entry["missing"]:
                lines += [f"Missing pairs: {', '.join(entry['missing'])}", ""]
            if entry["collapsed"]:
                lines += [f"Left out, collapsed: {', '.join(entry['collapsed'])}", ""]
    text = json.dumps(summary, indent=2) + "\n"
    atomic_write(out / f"{SUMMARY}.json", lambda p: p.write_text(text))
    atomic_write(out / f"{SUMMARY}.md", lambda p: p.write_text("\n".join(lines) + "\n"))
    return summary
