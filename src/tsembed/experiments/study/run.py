"""Running a study: every (stage, suite, seed, variant) run, resumable, ``jobs`` of them side by side.

Runs live in ``OUT/runs/SUITE/seedN/VARIANT/`` and are the ablation's runs (``experiments.runner.run_variant``):
a dev and an eval stage of one variant, suite and seed share the trained model. A run whose split has its
record and per-query hits is skipped. Each run trains and evaluates on one thread (``run.num_threads=1``;
with ``jobs`` > 1 each is a subprocess with ``OMP_NUM_THREADS=1``, its log in ``RUN/study.log``).

``OUT/study.json`` records the git commit of the code the first run started from (the source tree of the tsembed
package the process imports, and the study file's commit where that differs); a later ``run`` from another
commit is refused unless ``allow_commit_change`` (run studies from a pinned worktree).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tsembed.errors import ConfigError
from tsembed.evaluation.hits import hits_path
from tsembed.experiments.runner import evaluation_dir, load_base_config, results_path
from tsembed.experiments.study.gate import GateReading, read_gate
from tsembed.experiments.study.selection import Selection, select
from tsembed.experiments.study.spec import ComposeSpec, StageSpec, Study, builtin_variants
from tsembed.experiments.variants import Variant
from tsembed.fileio import atomic_write
from tsembed.training.checkpoint import MODEL_DIR

logger = logging.getLogger(__name__)

STATE = "study.json"
TASK = "study-task.json"
THREAD_OVERRIDES = ("run.num_threads=1", "run.progress=false")


@dataclass(frozen=True)
class RunTask:
    """One training + evaluation of a study."""

    stage: str
    split: str
    suite: str
    suite_path: Path
    seed: int
    variant: Variant
    run_dir: Path
    cache_dir: Path
    compose: ComposeSpec | None = None  # a composed variant: joined from its experts' runs of this suite and seed

    @property
    def results(self) -> Path:
        return results_path(self.run_dir, self.split)

    @property
    def hits(self) -> Path:
        path = hits_path(evaluation_dir(self.run_dir, self.split))
        legacy = hits_path(self.run_dir)  # an eval run finished before each split had its folder (0.x studies)
        return legacy if self.split == "eval" and not path.is_file() and legacy.is_file() else path

    def done(self) -> bool:
        return self.results.is_file() and self.hits.is_file()

    def label(self) -> str:
        return f"{self.stage}: {self.variant.name} on {self.suite}, seed {self.seed} ({self.split})"

    def to_dict(self, base: dict[str, Any]) -> dict[str, Any]:
        v = self.variant
        return {"stage": self.stage, "split": self.split, "suite": self.suite, "suite_path": str(self.suite_path),
                "seed": self.seed, "run_dir": str(self.run_dir), "cache_dir": str(self.cache_dir), "base": base,
                "variant": {"name": v.name, "description": v.description, "overrides": list(v.overrides),
                            "trained": v.trained},
                "compose": self.compose.to_dict() if self.compose is not None else None}


Runner = Callable[[RunTask, dict[str, Any]], None]


def run_dir(out: Path, suite: str, seed: int, variant: str) -> Path:
    return Path(out) / "runs" / suite / f"seed{seed}" / variant


def base_config(study: Study) -> dict[str, Any]:
    return load_base_config(study.base_config, study.base_overrides())


def variants(study: Study, base: dict[str, Any]) -> dict[str, Variant]:
    """Built-in ablation variants of the base config and the study's own."""
    builtin = builtin_variants(base)
    return {**builtin, **study.resolve_variants(builtin)}


def load_records(study: Study, out: Path, stage: StageSpec, names: list[str] | None = None) -> dict:
    """(variant, suite, seed) -> record of every finished run of ``stage`` (``names``: these variants)."""
    records = {}
    for suite in stage.suites:
        for seed in stage.seeds:
            for name in names or stage.variants:
                path = results_path(run_dir(out, suite, seed, name), stage.split)
                if path.is_file():
                    records[(name, suite, seed)] = json.loads(path.read_text())
    return records


def selection(study: Study, out: Path) -> Selection:
    """The selection rule applied to its stage's finished runs."""
    if study.selection is None:
        raise ConfigError(f"{study.path}: the study has no selection")
    stage = study.stage(study.selection.stage)
    return select(study.selection, load_records(study, out, stage))


def gate(study: Study, out: Path) -> GateReading:
    """The suite gate read from its stage's runs.

    Raises:
        ConfigError: the study has no gate, or a run of the gate's stage has not finished.
    """
    if study.gate is None:
        raise ConfigError(f"{study.path}: the study has no gate")
    stage = study.stage(study.gate.stage)
    require_finished(study, out, stage, f"the gate reads stage {stage.name!r}: finish it first")
    return read_gate(study.gate, load_records(study, out, stage))


def require_finished(study: Study, out: Path, stage: StageSpec, why: str) -> None:
    """Raise ``ConfigError(why ...)`` naming the missing runs unless every run of ``stage`` has finished."""
    missing = [t.label() for t in plan_stage(study, out, stage, {}) if not t.done()]
    if missing:
        raise ConfigError(f"{why} ({len(missing)} runs missing, e.g. {missing[0]})")


def stage_variants(study: Study, out: Path, stage: StageSpec) -> list[str]:
    if not stage.selected:
        return list(stage.variants)
    if study.selection is None:
        raise ConfigError(f"{study.path}: stage {stage.name!r} runs the selected variant, but there is no selection")
    sel = study.stage(study.selection.stage)
    require_finished(study, out, sel, f"stage {stage.name!r} runs the selected variant: finish stage {sel.name!r} "
                     "first")
    return list(dict.fromkeys([*stage.variants, selection(study, out).winner]))


def plan_stage(study: Study, out: Path, stage: StageSpec, resolved: dict[str, Variant]) -> list[RunTask]:
    names = stage_variants(study, out, stage)
    cache = Path(out) / "eval-cache"
    composed = {name: spec.compose for name, spec in study.variants.items() if spec.compose is not None}
    return [RunTask(stage.name, stage.split, suite, study.suites[suite].path, seed,
                    resolved.get(name) or Variant(name, name), run_dir(out, suite, seed, name), cache,
                    composed.get(name))
            for seed in stage.seeds for suite in stage.suites for name in names]  # seed-major: an interrupted
    # stage leaves whole training seeds on every suite build, which an interim reading can pair


def git_state(root: Path) -> dict[str, Any]:
    def git(*args: str) -> subprocess.CompletedProcess | None:
        try:
            return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, check=False)
        except OSError:
            return None

    head = git("rev-parse", "HEAD")
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": head.stdout.strip() if head and head.returncode == 0 else None,
            "dirty": bool(dirty and dirty.stdout.strip())}


def code_root() -> Path:
    """The source tree of the tsembed package this process imported (a pinned worktree's ``src/..``)."""
    import tsembed

    return Path(tsembed.__file__).resolve().parents[2]


def check_commit(study: Study, out: Path, allow_change: bool = False) -> dict[str, Any]:
    """Record (first run) or compare (later runs) the commit runs start from; returns the state.

    Raises:
        ConfigError: the working tree is at another commit than the recorded one and not ``allow_change``.
    """
    path = Path(out) / STATE
    now = git_state(code_root())  # the code that trains, which need not be the study file's checkout
    if (study_commit := git_state(study.root)["commit"]) not in (None, now["commit"]):
        now["study_file_commit"] = study_commit
    state = json.loads(path.read_text()) if path.is_file() else None
    if state is None:
        state = {"name": study.name, "study": str(study.path), "sha256": study.sha256(), **now, "history": []}
    elif state.get("commit") != now["commit"]:
        if not allow_change:
            raise ConfigError(f"{out} was run from commit {state.get('commit')}; the working tree is at "
                              f"{now['commit']}. Run from a worktree at the recorded commit, or pass "
                              "--allow-commit-change to continue (it is recorded)")
        logger.warning("continuing %s from commit %s (was %s)", out, now["commit"], state.get("commit"))
        state["history"] = [*state.get("history", []), {"commit": state.get("commit")}]
        state.update(now)
    if state.get("sha256") != study.sha256():
        logger.warning("the study file %s changed since %s was first run", study.path, out)
        state["history"] = [*state.get("history", []), {"sha256": state.get("sha256")}]
        state["sha256"] = study.sha256()
    if now["dirty"]:
        logger.warning("the working tree at %s has uncommitted changes; runs record only its commit", code_root())
    Path(out).mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda p: p.write_text(json.dumps(state, indent=2) + "\n"))
    return state


def ensure_suites(study: Study, names: list[str]) -> None:
    """Build each missing suite with ``tsembed data build-suite --out PATH *build`` (a subprocess: the library
    does not call the command line in-process)."""
    for name in dict.fromkeys(names):
        spec = study.suites[name]
        if (spec.path / "suite.json").is_file():
            continue
        logger.info("building suite %s at %s", name, spec.path)
        done = subprocess.run([sys.executable, "-m", "tsembed", "data", "build-suite", "--out", str(spec.path),
                               *spec.build, "--no-progress"], env=_env(), capture_output=True, text=True,
                              check=False)
        if done.returncode != 0:
            raise ConfigError(f"{study.path}: suites.{name}: build-suite {' '.join(spec.build)} failed: "
                              f"{(done.stderr or done.stdout).strip()[-2000:]}")


def _env() -> dict[str, str]:
    """The environment of a child process: this package first on the path, one thread."""
    import tsembed

    src = str(Path(tsembed.__file__).resolve().parents[1])
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
            "PYTHONPATH": os.pathsep.join([src, *filter(None, [os.environ.get("PYTHONPATH")])])}


def _check_identity(task: RunTask) -> None:
    """A run directory keeps the overrides it was run with; another set for the same name is an error."""
    path = task.run_dir / "study-run.json"
    mine = {"variant": task.variant.name, "overrides": list(task.variant.overrides), "trained": task.variant.trained,
            "suite": str(task.suite_path), "seed": task.seed}
    if path.is_file():
        theirs = json.loads(path.read_text())
        if theirs != mine:
            raise ConfigError(f"{task.run_dir} was run as {theirs}, the study now asks for {mine}; give the changed "
                              "variant a new name (a finished run is never redefined)")
        return
    task.run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda p: p.write_text(json.dumps(mine, indent=2) + "\n"))


def in_process(task: RunTask, base: dict[str, Any]) -> None:
    """Train (if needed) and evaluate one run in this process, on one thread (a composed run: compose its
    experts' models of the same suite and seed, then evaluate)."""
    import torch

    from tsembed.experiments.runner import run_composed, run_variant

    torch.set_num_threads(1)
    if task.compose is not None:
        experts = {name: task.run_dir.parent / variant / MODEL_DIR for name, variant in task.compose.experts.items()}
        run_composed(task.variant, task.seed, task.run_dir, task.suite_path, task.cache_dir, experts,
                     task.compose.options(), split=task.split)
        return
    run_variant(base, task.variant, task.seed, task.run_dir, task.suite_path, task.cache_dir,
                extra=list(THREAD_OVERRIDES), split=task.split)


def in_subprocess(task: RunTask, base: dict[str, Any]) -> None:
    """``in_process`` in a fresh interpreter with one thread; its output goes to ``RUN/study.log``."""
    task_file = task.run_dir / TASK
    atomic_write(task_file, lambda p: p.write_text(json.dumps(task.to_dict(base), indent=2) + "\n"))
    with open(task.run_dir / "study.log", "a") as log:
        code = subprocess.run([sys.executable, "-m", "tsembed.experiments.study.run", str(task_file)], env=_env(),
                              stdout=log, stderr=subprocess.STDOUT, check=False).returncode
    if code != 0:
        raise RuntimeError(f"{task.label()} failed (exit {code}); see {task.run_dir / 'study.log'}")


def execute(study: Study, out: Path, stages: list[str] | None = None, jobs: int = 1,
            allow_commit_change: bool = False, runner: Runner | None = None) -> list[RunTask]:
    """Run what is missing of ``stages`` (default: all, in order); returns the runs that ran.

    A stage with ``selected: true`` runs the winner of the selection once its stage has finished; a stage the
    gate guards runs only once the gate has passed (a failed gate skips it, with a warning).

    Raises:
        ConfigError: another commit (see ``check_commit``), a redefined run, a selection or gate stage not finished.
        RuntimeError: a run failed (the others of its stage still finish first).
    """
    if jobs < 1:
        raise ConfigError(f"--jobs must be at least 1, got {jobs}")
    out = Path(out)
    picked = [study.stage(name) for name in stages] if stages else list(study.stages)
    check_commit(study, out, allow_commit_change)
    base = base_config(study)
    resolved = variants(study, base)
    runner = runner or (in_process if jobs == 1 else in_subprocess)
    ran: list[RunTask] = []
    for stage in picked:
        if study.gate is not None and stage.name in study.gate.guards and not (reading := gate(study, out)).passed:
            over = [f"{m['condition']} {m['margin']:+.1f}" for m in reading.margins.values()]
            logger.warning("stage %s not run: the gate failed (margins %s; it needs %d >= %g)", stage.name,
                           ", ".join(over), study.gate.min_conditions, study.gate.min_margin)
            continue
        tasks = plan_stage(study, out, stage, resolved)
        todo = [t for t in tasks if not t.done()]
        logger.info("stage %s: %d runs, %d to do", stage.name, len(tasks), len(todo))
        if not todo:
            continue
        ensure_suites(study, [t.suite for t in todo])
        for task in todo:
            _check_identity(task)
        failures: list[str] = []

        def one(task: RunTask, failures: list[str] = failures) -> None:
            logger.info("start %s", task.label())
            try:
                runner(task, base)
            except Exception as exc:  # noqa: BLE001 - the other runs go on; the stage then fails
                logger.error("%s failed: %s", task.label(), exc)
                failures.append(f"{task.label()}: {exc}")
                return
            ran.append(task)
            logger.info("done %s", task.label())

        _schedule(todo, jobs, one)
        if failures:
            raise RuntimeError(f"stage {stage.name}: {len(failures)} run(s) failed: " + "; ".join(failures))
    return ran


def _ready(task: RunTask, waiting: list[RunTask]) -> bool:
    """A trained run is always ready; a composed run once none of its experts' runs (same suite and seed) waits."""
    if task.compose is None:
        return True
    experts = set(task.compose.experts.values())
    return not any(t.variant.name in experts and t.suite == task.suite and t.seed == task.seed for t in waiting)


def _schedule(todo: list[RunTask], jobs: int, one: Callable[[RunTask], None]) -> None:
    """Run ``todo`` in order, ``jobs`` at a time; a composed run waits for its experts' runs, nothing else does."""
    pending = list(todo)
    running: dict[Future, RunTask] = {}
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        while pending or running:
            for task in [t for t in pending if _ready(t, [*pending, *running.values()])]:
                if len(running) >= jobs:
                    break
                pending.remove(task)
                running[pool.submit(one, task)] = task
            if not running:  # cannot happen while experts are trained runs; never spin
                raise RuntimeError(f"no run is ready: {[t.label() for t in pending]}")
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                del running[future]


def _worker(task_file: str) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    data = json.loads(Path(task_file).read_text())
    v = data["variant"]
    task = RunTask(data["stage"], data["split"], data["suite"], Path(data["suite_path"]), data["seed"],
                   Variant(v["name"], v["description"], tuple(v["overrides"]), v["trained"]),
                   Path(data["run_dir"]), Path(data["cache_dir"]),
                   ComposeSpec(**data["compose"]) if data.get("compose") else None)
    in_process(task, data["base"])


if __name__ == "__main__":
    _worker(sys.argv[1])
