"""The study file: a checked-in YAML plan of runs (docs/studies.md), loaded and checked before anything runs.

Every error names the file and the field (``study.yaml: stages[1].suites: unknown suite 'x'``). Paths are
relative to the root of the git repository holding the study file (outside one: to the file's directory).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tsembed.errors import ConfigError
from tsembed.experiments.variants import Variant

SPLITS = ("dev", "eval")
CLUSTERINGS = ("row", "episode")
TOP_KEYS = {"name", "description", "base", "suites", "variants", "stages", "gate", "selection", "compare",
            "bootstrap"}
COMPOSE_KEYS = {"experts", "router_input", "target_routing", "pilots", "pilot_rows", "pilot_side"}
GATE_KEYS = {"stage", "joint", "specialists", "min_margin", "min_conditions", "guards", "rule"}


@dataclass(frozen=True)
class SuiteSpec:
    name: str
    path: Path  # resolved
    build: tuple[str, ...] = ()  # `tsembed data build-suite` arguments (without --out) when the suite is missing
    clusters: str = "row"  # row: each query row alone; episode: rows ranking one gallery of images, in any dataset
    family: str = ""  # suites of one family (one build at several seeds) are the bootstrap's suite-seed level


@dataclass(frozen=True)
class ComposeSpec:
    """A variant made by ``tsembed compose`` from other variants' models of the same suite and seed (no training):
    expert name -> the variant whose model becomes that expert."""

    experts: dict[str, str]
    router_input: str = "text"
    target_routing: str = "query"  # eval: a row's candidates embedded with its query's expert (an index per expert)
    pilots: int = 4
    pilot_rows: int = 512
    pilot_side: str = "pair"  # what the pilots are fitted on (tsembed.inference.compose.PILOT_SIDES)

    def to_dict(self) -> dict[str, Any]:
        """The settings (they name the run: study-run.json); ``pilot_side`` only when not its default, so runs made
        before it existed keep their identity."""
        out = {"experts": dict(self.experts), "router_input": self.router_input,
               "target_routing": self.target_routing, "pilots": self.pilots, "pilot_rows": self.pilot_rows}
        return out if self.pilot_side == "pair" else {**out, "pilot_side": self.pilot_side}

    def options(self) -> dict[str, Any]:
        """Every setting, defaults included: what ``runner.run_composed`` reads."""
        return {**self.to_dict(), "pilot_side": self.pilot_side}


@dataclass(frozen=True)
class VariantSpec:
    name: str
    source: str  # `from`: a built-in ablation variant, "base", or another variant of this study ("" if composed)
    set: dict[str, Any]
    description: str = ""
    compose: ComposeSpec | None = None


@dataclass(frozen=True)
class StageSpec:
    name: str
    split: str
    suites: tuple[str, ...]
    variants: tuple[str, ...]
    selected: bool  # the stage also runs the selection's winner
    seeds: tuple[int, ...]


@dataclass(frozen=True)
class SelectionSpec:
    stage: str
    candidates: tuple[str, ...]
    reference: str
    metric: str = "overall"
    max_drop: float = 1.0
    rule: str = ""
    fallback: str = ""


@dataclass(frozen=True)
class GateSpec:
    """A suite gate: in ``stage``, ``joint`` (trained on every dataset) against one specialist per dataset (each
    trained on that dataset alone); it passes when ≥ ``min_conditions`` specialists beat the joint model on their
    dataset by ≥ ``min_margin`` hit@1 points. The ``guards`` stages run only after it passed."""

    stage: str
    joint: str
    specialists: dict[str, str]  # specialist variant -> the one dataset it trains on
    min_margin: float = 10.0
    min_conditions: int = 2
    guards: tuple[str, ...] = ()
    rule: str = ""


@dataclass(frozen=True)
class CompareSpec:
    a: str
    b: str
    stage: str


@dataclass(frozen=True)
class BootstrapSpec:
    resamples: int = 10_000
    seed: int = 0
    level: float = 0.95


@dataclass(frozen=True)
class Study:
    path: Path
    root: Path
    name: str
    description: str
    base_config: Path | None
    base_set: dict[str, Any]
    suites: dict[str, SuiteSpec]
    variants: dict[str, VariantSpec]
    stages: tuple[StageSpec, ...]
    selection: SelectionSpec | None
    compare: tuple[CompareSpec, ...]
    bootstrap: BootstrapSpec = field(default_factory=BootstrapSpec)
    gate: GateSpec | None = None

    def stage(self, name: str) -> StageSpec:
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise ConfigError(f"{self.path}: no stage {name!r}; stages: {[s.name for s in self.stages]}")

    def sha256(self) -> str:
        return hashlib.sha256(self.path.read_bytes()).hexdigest()

    def base_overrides(self) -> list[str]:
        return overrides(self.base_set)

    def resolve_variants(self, builtin: dict[str, Variant]) -> dict[str, Variant]:
        """The study's variants as ablation ``Variant``s: their source's overrides, then their own ``set``."""
        out: dict[str, Variant] = {}

        def resolve(name: str, chain: tuple[str, ...]) -> Variant:
            if name in out:
                return out[name]
            spec = self.variants[name]
            if spec.compose is not None:  # its "overrides" name the run (study-run.json); no config is built from them
                out[name] = Variant(name, spec.description or "composed: " + ", ".join(
                    f"{e}={v}" for e, v in spec.compose.experts.items()),
                    tuple(overrides({f"compose.{k}": v for k, v in spec.compose.to_dict().items()})), False)
                return out[name]
            if spec.source in chain:
                raise ConfigError(f"{self.path}: variants.{name}.from: a cycle ({' -> '.join((*chain, name))})")
            if spec.source == "base":
                start = Variant("base", "the base config", (), True)
            elif spec.source in self.variants:
                start = resolve(spec.source, (*chain, name))
            else:
                start = builtin[spec.source]
            description = spec.description or f"{spec.source} with " + ", ".join(overrides(spec.set)) if spec.set \
                else spec.description or start.description
            out[name] = Variant(name, description, (*start.overrides, *overrides(spec.set)), start.trained)
            return out[name]

        for name in self.variants:
            resolve(name, ())
        return out


def overrides(values: dict[str, Any]) -> list[str]:
    """``{dotted.key: value}`` as ``key=value`` override strings (values as JSON, which YAML reads back)."""
    return [f"{key}={json.dumps(value)}" for key, value in values.items()]


def repo_root(start: Path) -> Path:
    """The git work tree holding ``start`` (``start`` itself when there is none)."""
    try:
        out = subprocess.run(["git", "-C", str(start), "rev-parse", "--show-toplevel"], capture_output=True,
                             text=True, check=False)
    except OSError:
        return start
    return Path(out.stdout.strip()) if out.returncode == 0 and out.stdout.strip() else start


class _Checker:
    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, where: str, message: str) -> None:
        raise ConfigError(f"{self.path}: {where}: {message}")

    def mapping(self, value: Any, where: str, keys: set[str] | None = None, required: tuple[str, ...] = ()) -> dict:
        if not isinstance(value, dict):
            self.fail(where, f"expected a mapping, got {type(value).__name__}")
        if keys is not None:
            unknown = sorted(set(value) - keys)
            if unknown:
                self.fail(where, f"unknown field(s) {unknown}; valid: {sorted(keys)}")
        for key in required:
            if key not in value:
                self.fail(f"{where}.{key}" if where else key, "required")
        return value

    def text(self, value: Any, where: str, empty: bool = False) -> str:
        if not isinstance(value, str) or (not empty and not value.strip()):
            self.fail(where, f"expected a non-empty string, got {value!r}")
        return value

    def names(self, value: Any, where: str, valid: dict | set, what: str) -> tuple[str, ...]:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not value:
            self.fail(where, f"expected a non-empty list of {what} names")
        for name in value:
            if name not in valid:
                self.fail(where, f"unknown {what} {name!r}; valid: {sorted(valid)}")
        if len(set(value)) != len(value):
            self.fail(where, f"a {what} is listed twice")
        return tuple(value)

    def number(self, value: Any, where: str, kind: type, low: float, high: float | None = None) -> Any:
        if isinstance(value, bool) or not isinstance(value, int if kind is int else (int, float)):
            self.fail(where, f"expected {'an integer' if kind is int else 'a number'}, got {value!r}")
        if value < low or (high is not None and value > high):
            self.fail(where, f"{value} is out of range [{low}, {'∞' if high is None else high}]")
        return kind(value)

    def settings(self, value: Any, where: str) -> dict[str, Any]:
        value = {} if value is None else self.mapping(value, where)
        for key in value:
            if not isinstance(key, str) or not key or any(not part for part in key.split(".")):
                self.fail(where, f"{key!r} is not a dotted config key (e.g. model.moe.rank)")
        return dict(value)


def load_study(path: str | Path, builtin: set[str] | None = None) -> Study:
    """Read and check a study file; ``builtin``: the names a variant may come ``from`` (default: the
    ablation's variants of the packaged config, the equal-active-parameter ones included).

    Raises:
        ConfigError: the file is missing or malformed; the message names the file and the field.
    """
    path = Path(path).resolve()
    c = _Checker(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read study file {path}: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML ({exc})") from None
    c.mapping(data, "top level", TOP_KEYS, ("name", "base", "suites", "variants", "stages"))
    root = repo_root(path.parent)
    if builtin is None:
        builtin = set(_builtin_names())

    base = c.mapping(data["base"], "base", {"config", "set"})
    config = base.get("config")
    if config is not None:
        config = root / c.text(config, "base.config")
        if not config.is_file():
            c.fail("base.config", f"no such file {config}")
    base_set = c.settings(base.get("set"), "base.set")

    suites: dict[str, SuiteSpec] = {}
    for name, value in c.mapping(data["suites"], "suites").items():
        where = f"suites.{name}"
        value = c.mapping(value, where, {"path", "build", "clusters", "family"}, ("path",))
        build = value.get("build") or []
        if not isinstance(build, list) or not all(isinstance(a, (str, int, float)) for a in build):
            c.fail(f"{where}.build", "expected a list of build-suite arguments, e.g. [--kind, conflict, --seed, 1]")
        if "--out" in build:
            c.fail(f"{where}.build", "--out is the suite's path; leave it out")
        clusters = value.get("clusters", "row")
        if clusters not in CLUSTERINGS:
            c.fail(f"{where}.clusters", f"{clusters!r} is not one of {list(CLUSTERINGS)}")
        suites[name] = SuiteSpec(name, root / c.text(value["path"], f"{where}.path"), tuple(str(a) for a in build),
                                 clusters, c.text(value.get("family", name), f"{where}.family"))
    if not suites:
        c.fail("suites", "no suite")

    variants: dict[str, VariantSpec] = {}
    raw_variants = c.mapping(data["variants"], "variants")
    for name, value in raw_variants.items():
        where = f"variants.{name}"
        value = c.mapping(value, where, {"from", "set", "description", "compose"})
        if ("from" in value) == ("compose" in value):
            c.fail(where, "give either from (a variant to train) or compose (experts to join), not both or neither")
        if "compose" in value:
            if name in builtin:
                c.fail(where, f"{name!r} is a built-in variant; choose another name")
            if value.get("set"):
                c.fail(f"{where}.set", "a composed variant trains nothing; set its experts' variants instead")
            variants[name] = VariantSpec(name, "", {}, c.text(value.get("description", ""), f"{where}.description",
                                                             empty=True),
                                         _compose(c, value["compose"], f"{where}.compose", raw_variants, builtin))
            continue
        source = c.text(value["from"], f"{where}.from")
        if name in builtin:
            c.fail(where, f"{name!r} is a built-in variant; choose another name")
        if source != "base" and source not in builtin and source not in raw_variants:
            c.fail(f"{where}.from", f"unknown variant {source!r}; valid: base, a built-in variant "
                   f"({', '.join(sorted(builtin))}) or another of this study's variants")
        variants[name] = VariantSpec(name, source, c.settings(value.get("set"), f"{where}.set"),
                                     c.text(value.get("description", ""), f"{where}.description", empty=True))
    runnable = {*variants, *builtin}
    for name, spec in variants.items():
        if spec.source in variants and variants[spec.source].compose is not None:
            c.fail(f"variants.{name}.from", f"{spec.source!r} is composed, not trained; derive from its experts")

    stages: list[StageSpec] = []
    raw_stages = data["stages"]
    if not isinstance(raw_stages, list) or not raw_stages:
        c.fail("stages", "expected a non-empty list")
    for i, value in enumerate(raw_stages):
        where = f"stages[{i}]"
        value = c.mapping(value, where, {"name", "split", "suites", "variants", "selected", "seeds"},
                          ("name", "split", "suites", "seeds"))
        name = c.text(value["name"], f"{where}.name")
        if any(s.name == name for s in stages):
            c.fail(f"{where}.name", f"stage {name!r} appears twice")
        if value["split"] not in SPLITS:
            c.fail(f"{where}.split", f"{value['split']!r} is not one of {list(SPLITS)}")
        selected = value.get("selected", False)
        if not isinstance(selected, bool):
            c.fail(f"{where}.selected", "expected true or false")
        if not selected and "variants" not in value:
            c.fail(where, "give variants (a list), selected: true (the selection's winner), or both")
        seeds = value["seeds"]
        if not isinstance(seeds, list) or not seeds or len(set(map(str, seeds))) != len(seeds):
            c.fail(f"{where}.seeds", "expected a non-empty list of distinct integers")
        seeds = tuple(c.number(s, f"{where}.seeds", int, 0, 2**32 - 1) for s in seeds)
        stages.append(StageSpec(name, value["split"], c.names(value["suites"], f"{where}.suites", suites, "suite"),
                                c.names(value["variants"], f"{where}.variants", runnable, "variant")
                                if "variants" in value else (), selected, seeds))
        for variant in stages[-1].variants:
            spec = variants.get(variant)
            missing = [v for v in spec.compose.experts.values() if v not in stages[-1].variants] \
                if spec is not None and spec.compose is not None else []
            if missing:
                c.fail(f"{where}.variants", f"{variant!r} is composed from {missing}: run them in the same stage")
    stage_names = [s.name for s in stages]

    selection = None
    if data.get("selection") is not None:
        value = c.mapping(data["selection"], "selection",
                          {"stage", "candidates", "reference", "metric", "max_drop", "rule", "fallback"},
                          ("stage", "candidates", "reference"))
        stage = c.text(value["stage"], "selection.stage")
        if stage not in stage_names:
            c.fail("selection.stage", f"unknown stage {stage!r}; stages: {stage_names}")
        picked = next(s for s in stages if s.name == stage)
        if picked.selected:
            c.fail("selection.stage", f"stage {stage!r} runs the selection's winner; select on another stage")
        candidates = c.names(value["candidates"], "selection.candidates", set(picked.variants),
                             "variant (of that stage)")
        reference = c.text(value["reference"], "selection.reference")
        if reference not in picked.variants:
            c.fail("selection.reference", f"{reference!r} is not run in stage {stage!r} ({list(picked.variants)})")
        fallback = value.get("fallback", reference)
        if fallback not in runnable:
            c.fail("selection.fallback", f"unknown variant {fallback!r}")
        from tsembed.evaluation.results import GROUPS

        metric = value.get("metric", "overall")
        if metric not in GROUPS:
            c.fail("selection.metric", f"{metric!r} is not one of {list(GROUPS)}")
        selection = SelectionSpec(stage, candidates, reference, metric,
                                  c.number(value.get("max_drop", 1.0), "selection.max_drop", float, 0.0),
                                  c.text(value.get("rule", ""), "selection.rule", empty=True), fallback)
        if stage_names.index(stage) > min((stage_names.index(s.name) for s in stages if s.selected),
                                          default=len(stages)):
            c.fail("selection.stage", "must come before every stage with selected: true")
    elif any(s.selected for s in stages):
        c.fail("selection", "a stage runs the selected variant, but the study has no selection")

    compare: list[CompareSpec] = []
    for i, value in enumerate(data.get("compare") or []):
        where = f"compare[{i}]"
        value = c.mapping(value, where, {"a", "b", "stage"}, ("a", "b", "stage"))
        stage_name = c.text(value["stage"], f"{where}.stage")
        if stage_name not in stage_names:
            c.fail(f"{where}.stage", f"unknown stage {stage_name!r}; stages: {stage_names}")
        stage = next(s for s in stages if s.name == stage_name)
        for side in ("a", "b"):
            name = c.text(value[side], f"{where}.{side}")
            if name == "selected" and stage.selected:
                continue
            if name not in stage.variants:
                c.fail(f"{where}.{side}", f"{name!r} is not run in stage {stage_name!r} "
                       f"({[*stage.variants, *(['selected'] if stage.selected else [])]})")
        compare.append(CompareSpec(value["a"], value["b"], stage_name))

    gate = None
    if data.get("gate") is not None:
        gate = _gate(c, data["gate"], stages, variants)

    boot = c.mapping(data.get("bootstrap") or {}, "bootstrap", {"resamples", "seed", "level"})
    bootstrap = BootstrapSpec(c.number(boot.get("resamples", 10_000), "bootstrap.resamples", int, 1),
                              c.number(boot.get("seed", 0), "bootstrap.seed", int, 0),
                              c.number(boot.get("level", 0.95), "bootstrap.level", float, 0.5, 0.999))
    study = Study(path, root, c.text(data["name"], "name"), c.text(data.get("description", ""), "description",
                                                                    empty=True),
                  config, base_set, suites, variants, tuple(stages), selection, tuple(compare), bootstrap, gate)
    study.resolve_variants({name: Variant(name, name) for name in builtin})  # cycles fail here
    return study


def _compose(c: _Checker, value: Any, where: str, raw_variants: dict, builtin: set[str]) -> ComposeSpec:
    from tsembed.inference.compose import PILOT_SIDES
    from tsembed.moe.config import TARGET_ROUTINGS

    value = c.mapping(value, where, COMPOSE_KEYS, ("experts",))
    experts = c.mapping(value["experts"], f"{where}.experts")
    if len(experts) < 2:
        c.fail(f"{where}.experts", "at least two experts (NAME: VARIANT)")
    for expert, variant in experts.items():
        c.text(expert, f"{where}.experts")
        if variant not in raw_variants and variant not in builtin:
            c.fail(f"{where}.experts.{expert}", f"unknown variant {variant!r}")
        if isinstance(raw_variants.get(variant), dict) and "compose" in raw_variants[variant]:
            c.fail(f"{where}.experts.{expert}", f"{variant!r} is itself composed; name trained variants")
    router_input = value.get("router_input", "text")
    if router_input not in ("text", "all"):
        c.fail(f"{where}.router_input", f"{router_input!r} is not one of ['text', 'all']")
    target_routing = value.get("target_routing", "query")
    if target_routing not in TARGET_ROUTINGS:
        c.fail(f"{where}.target_routing", f"{target_routing!r} is not one of {list(TARGET_ROUTINGS)}")
    pilot_side = value.get("pilot_side", "pair")
    if pilot_side not in PILOT_SIDES:
        c.fail(f"{where}.pilot_side", f"{pilot_side!r} is not one of {list(PILOT_SIDES)}")
    return ComposeSpec({str(k): str(v) for k, v in experts.items()}, router_input, target_routing,
                       c.number(value.get("pilots", 4), f"{where}.pilots", int, 1),
                       c.number(value.get("pilot_rows", 512), f"{where}.pilot_rows", int, 1), pilot_side)


def _gate(c: _Checker, value: Any, stages: list[StageSpec], variants: dict[str, VariantSpec]) -> GateSpec:
    value = c.mapping(value, "gate", GATE_KEYS, ("stage", "joint", "specialists"))
    names = [s.name for s in stages]
    stage_name = c.text(value["stage"], "gate.stage")
    if stage_name not in names:
        c.fail("gate.stage", f"unknown stage {stage_name!r}; stages: {names}")
    stage = stages[names.index(stage_name)]
    joint = c.text(value["joint"], "gate.joint")
    if joint not in stage.variants:
        c.fail("gate.joint", f"{joint!r} is not run in stage {stage_name!r} ({list(stage.variants)})")
    specialists: dict[str, str] = {}
    for name in c.names(value["specialists"], "gate.specialists", set(stage.variants), "variant (of that stage)"):
        dataset = specialist_dataset(variants, name)
        if dataset is None:
            c.fail("gate.specialists", f"{name!r} must train on exactly one dataset (data.datasets: [NAME] in its "
                   "set or its sources')")
        if dataset in specialists.values():
            c.fail("gate.specialists", f"two specialists train on {dataset!r}")
        specialists[name] = dataset
    if joint in specialists:
        c.fail("gate.joint", f"{joint!r} is also listed as a specialist")
    guards = c.names(value["guards"], "gate.guards", set(names), "stage") if value.get("guards") else ()
    for guard in guards:
        if names.index(guard) <= names.index(stage_name):
            c.fail("gate.guards", f"stage {guard!r} must come after the gate's stage {stage_name!r}")
    return GateSpec(stage_name, joint, specialists,
                    c.number(value.get("min_margin", 10.0), "gate.min_margin", float, 0.0),
                    c.number(value.get("min_conditions", 1 if len(specialists) == 1 else 2), "gate.min_conditions",
                             int, 1, len(specialists)),
                    guards, c.text(value.get("rule", ""), "gate.rule", empty=True))


def specialist_dataset(variants: dict[str, VariantSpec], name: str) -> str | None:
    """The one dataset a study variant trains on (its own ``data.datasets``, else its nearest source's); None
    when it sets none or several (a built-in variant trains on the whole suite)."""
    seen: set[str] = set()
    while name in variants and name not in seen:
        seen.add(name)
        spec = variants[name]
        if "data.datasets" in spec.set:
            datasets = spec.set["data.datasets"]
            return datasets[0] if isinstance(datasets, list) and len(datasets) == 1 and \
                isinstance(datasets[0], str) else None
        name = spec.source
    return None


def builtin_variants(base: dict[str, Any]) -> dict[str, Variant]:
    """The ablation's variants of a resolved base config, for every EANS mode and the equal-active ones."""
    from tsembed.experiments.variants import variants_for
    from tsembed.training.eans import EANS_MODES

    return variants_for(base, tuple(m for m in EANS_MODES if m != "off"), extra=True)


def _builtin_names() -> list[str]:
    return list(builtin_variants({}))
