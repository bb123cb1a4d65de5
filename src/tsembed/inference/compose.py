"""Compose single-adapter models into one MoE-LoRA model routed by pilot embeddings, with no joint training.

Models trained apart on the same backbone (same bridge, same adapter shape) become the routed experts of one
model, expert e holding model e's LoRA; a pilot router (``tsembed.moe.pilot``) sends each input to the expert
whose pilots (centroids of the base model's embeddings of that expert's training inputs) are nearest. Adding an
expert later copies the others and their pilots unchanged, so every input still routed to an old expert gets a
bit-identical vector (top-1 routing; the layers run each expert only on its own inputs).

An optional fallback expert (``--fallback NAME=MODEL_DIR``, e.g. one LoRA trained on every task) has no pilots: it
takes the inputs whose nearest expert is further than that expert's floor, the affinity all but a small share of the
expert's own training inputs reach, so an instruction the pilots do not recognise goes to a generalist rather than to
a wrong specialist.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from tsembed.errors import AdapterError, ConfigError
from tsembed.moe.config import TARGET_ROUTINGS
from tsembed.moe.pilot import NO_FLOOR, PilotRouter

logger = logging.getLogger(__name__)

REPORT_NAME = "compose.json"
#: adapter settings every source must share (the routing settings are the composed model's own)
SHARED_ADAPTER_KEYS = ("target_modules", "rank", "alpha", "dropout", "adapter_dtype")
SHARED_MODEL_KEYS = ("pooling", "normalize", "query_instruction", "document_instruction")


@dataclass(frozen=True)
class ExpertSource:
    """One expert to compose: its name, the saved single-adapter model, and where its pilot inputs come from
    (rows in any format ``calibration_inputs`` reads; None: the model's own training datasets in the suite)."""

    name: str
    model_dir: Path
    pilot_data: Path | None = None


@dataclass
class _Source:
    """A source model read from disk and checked: its config, adapter tensors and trainable-weights checksum."""

    name: str
    directory: Path
    config: Any  # ModelConfig
    adapters: dict[str, torch.Tensor]  # "<module>.lora_A" [r, d_in], "<module>.lora_B" [d_out, r]
    trainable_sha: str | None
    fingerprint: str


def parse_expert(spec: str, option: str = "--expert") -> tuple[str, Path]:
    """``NAME=PATH`` → (name, path); a clear error for anything else."""
    name, sep, path = spec.partition("=")
    if not sep or not name.strip() or not path.strip():
        raise ConfigError(f"{option} {spec!r}: expected NAME=PATH (e.g. {option} tone=runs/tone/model)")
    return name.strip(), Path(path.strip())


def _read_source(name: str, directory: Path, single: bool = True) -> _Source:
    """``single``: the model must be one LoRA (a source); False reads a composed model (the one --add extends)."""
    from tsembed.model import (
        ADAPTER_DIR,
        MODEL_CONFIG_NAME,
        TRAINABLE_WEIGHTS_NAME,
        WEIGHT_FILES,
        ModelConfig,
        model_fingerprint,
    )
    from tsembed.moe.io import adapter_files
    from tsembed.weights import read_safetensors, verify_checksums

    path = directory / MODEL_CONFIG_NAME
    if not path.is_file():
        raise ConfigError(f"expert {name!r}: {directory} is not a tsembed model directory ({MODEL_CONFIG_NAME} "
                          "not found)")
    try:
        config = ModelConfig.from_dict(json.loads(path.read_text()))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"expert {name!r}: {path}: not valid JSON ({exc})") from None
    moe = config.moe
    if moe is None:
        raise ConfigError(f"expert {name!r}: {directory} has no adapters (moe: null); compose joins LoRA models")
    if single and (moe.num_experts, moe.num_shared_experts, moe.num_null_experts, moe.router) != (1, 0, 0, "learned"):
        raise ConfigError(f"expert {name!r}: {directory} has {moe.num_experts} routed, {moe.num_shared_experts} "
                          f"shared and {moe.num_null_experts} null experts ({moe.router} router); compose joins "
                          "single-adapter models (one LoRA: moe.num_experts 1)")
    from tsembed.backbones.reference import resolve_backbone_config

    config.backbone = resolve_backbone_config(config.backbone, directory)  # comparable wherever each model lives
    sums = verify_checksums(directory, list(WEIGHT_FILES))
    weights = read_safetensors(adapter_files(directory / ADAPTER_DIR)[1])
    adapters = {k: v for k, v in weights.items() if k.endswith((".lora_A", ".lora_B"))}
    trainable = directory / TRAINABLE_WEIGHTS_NAME
    trainable_sha = None
    if trainable.is_file():
        from tsembed.weights import sha256_file

        trainable_sha = (sums or {}).get(TRAINABLE_WEIGHTS_NAME) or sha256_file(trainable)
    return _Source(name, directory, config, adapters, trainable_sha, model_fingerprint(directory, sums))


def _check_compatible(reference: _Source, other: _Source) -> None:
    """Same backbone, bridge weights, adapter shape, pooling and instructions, or one error listing each difference."""
    problems = []
    ref_backbone, backbone = dict(reference.config.backbone), dict(other.config.backbone)
    for key in sorted(set(ref_backbone) | set(backbone)):
        if ref_backbone.get(key) != backbone.get(key):
            problems.append(f"backbone.{key}: {ref_backbone.get(key)!r} vs {backbone.get(key)!r}")
    if reference.trainable_sha != other.trainable_sha:
        problems.append("the backbone's trainable weights (e.g. the visual bridge) differ")
    for key in SHARED_ADAPTER_KEYS:
        a, b = getattr(reference.config.moe, key), getattr(other.config.moe, key)
        if a != b:
            problems.append(f"moe.{key}: {a!r} vs {b!r}")
    for key in SHARED_MODEL_KEYS:
        a, b = getattr(reference.config, key), getattr(other.config, key)
        if a != b:
            problems.append(f"{key}: {a!r} vs {b!r}")
    if problems:
        raise ConfigError(f"expert {other.name!r} ({other.directory}) cannot join expert {reference.name!r} "
                          f"({reference.directory}): " + "; ".join(problems))


def _composed_config(reference: _Source, names: list[str], top_k: int, router_input: str, target_routing: str,
                     extra: dict[str, Any]) -> Any:
    from tsembed.model import ModelConfig

    moe = replace(reference.config.moe, num_experts=len(names), router="pilot", level="sequence", routing="topk",
                  top_k=top_k, expert_names=list(names), jitter=0.0, router_input=router_input, task_hints=[],
                  task_hint_init=0.0, target_routing=target_routing)
    return ModelConfig(backbone=dict(reference.config.backbone), moe=moe, pooling=reference.config.pooling,
                       normalize=reference.config.normalize, query_instruction=reference.config.query_instruction,
                       document_instruction=reference.config.document_instruction, extra=extra)


def _copy_expert(model: Any, expert: int, adapters: dict[str, torch.Tensor], name: str) -> None:
    """Write one expert's LoRA factors into rows [e·r, (e+1)·r) of every composed layer."""
    from tsembed.moe import adapter_layers

    layers = adapter_layers(model.backbone)
    wanted = {f"{m}.{p}" for m in layers for p in ("lora_A", "lora_B")}
    if set(adapters) != wanted:
        missing, unexpected = sorted(wanted - set(adapters)), sorted(set(adapters) - wanted)
        raise AdapterError(f"expert {name!r}: adapted modules differ from the composed model's (missing "
                           f"{missing[:4]}, unexpected {unexpected[:4]})")
    with torch.no_grad():
        for module, layer in layers.items():
            r = layer.rank
            layer.lora_A[expert * r:(expert + 1) * r].copy_(adapters[f"{module}.lora_A"])
            layer.lora_B[:, expert * r:(expert + 1) * r].copy_(adapters[f"{module}.lora_B"])


def expert_adapters(model: Any, expert: int) -> dict[str, torch.Tensor]:
    """Expert ``expert`` of a composed model as a single adapter's tensors (what ``_copy_expert`` writes)."""
    from tsembed.moe import adapter_layers

    out = {}
    for module, layer in adapter_layers(model.backbone).items():
        a, b = layer.expert_factors(expert)
        out[f"{module}.lora_A"], out[f"{module}.lora_B"] = a.detach().clone(), b.detach().clone()
    return out


#: What an expert's pilots are fitted on: its training rows' queries and positives (``pair``), or their queries
#: alone (``query``: for query-routed targets, where only queries are ever routed; with one generic target
#: instruction every expert's positives look alike to the router and would put pilots on one shared point).
PILOT_SIDES = ("pair", "query")


def pilot_inputs(source: _Source, pilot_data: Path | None, suite: Path | None, max_rows: int,
                 side: str = "pair") -> tuple[list, str]:
    """Up to ``max_rows`` training rows' queries and positives (``side`` ``query``: queries alone) for an expert's
    pilots, and where they came from."""
    from tsembed.inference.calibration import calibration_inputs

    if side not in PILOT_SIDES:
        raise ConfigError(f"--pilot-side must be one of {list(PILOT_SIDES)}, got {side!r}")
    queries_only = side == "query"
    if pilot_data is not None:
        items = calibration_inputs(pilot_data, per_dataset=max_rows, queries_only=queries_only)
        return items[: max_rows if queries_only else 2 * max_rows], str(pilot_data) + (" queries" if queries_only
                                                                                        else "")
    datasets = list(source.config.extra.get("train_datasets") or [])
    if suite is None or not datasets:
        raise ConfigError(f"expert {source.name!r}: give --pilot-data {source.name}=ROWS (its training rows), or "
                          "--suite SUITE for a model whose config lists its training datasets "
                          f"({'none listed' if not datasets else 'listed: ' + ', '.join(datasets)})")
    from tsembed.data.suite import load_suite
    from tsembed.inference.calibration import pair_inputs

    loaded = load_suite(suite)
    per = max(1, max_rows // len(datasets))
    items = [x for name in datasets for x in pair_inputs(loaded.train(name), per, queries_only)]
    return items, f"{suite} train{' queries' if queries_only else ''}: {', '.join(datasets)}"


def _pilots(model: Any, items: list, k: int, seed: int, batch_size: int,
            floor_quantile: float | None = None) -> tuple[torch.Tensor, float]:
    """One expert's pilots and floor (``NO_FLOOR`` without ``floor_quantile``) from the base model's embeddings of
    its training inputs."""
    from tsembed.encoding import embed_items
    from tsembed.moe.pilot import fit_pilots, pilot_floor

    embeddings = embed_items(model, items, batch_size, pilot=True).embeddings
    pilots = fit_pilots(embeddings, k, seed)
    if floor_quantile is None:
        return pilots, NO_FLOOR
    own = PilotRouter(pilots.unsqueeze(0)).affinity(embeddings)[:, 0]
    return pilots, pilot_floor(own, floor_quantile)


def _stack(pilots: list[torch.Tensor]) -> torch.Tensor:
    """[E, k, D] from per-expert [k_e, D], padded with zero rows (which never win)."""
    k = max(p.shape[0] for p in pilots)
    return torch.stack([torch.nn.functional.pad(p, (0, 0, 0, k - p.shape[0])) for p in pilots])


def _save_atomically(model: Any, out: Path, report: dict[str, Any]) -> Path:
    """Write the model into a sibling temp directory, then swap it in: never a half-written model directory."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        model.save_pretrained(staging)
        (staging / REPORT_NAME).write_text(json.dumps(report, indent=2) + "\n")
        old = None
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            out.rename(old)
        staging.rename(out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def _source_fields(source: _Source) -> dict[str, Any]:
    """What every expert's record says of its source model."""
    return {"name": source.name, "source": str(source.directory.resolve()), "fingerprint": source.fingerprint,
            "train_datasets": list(source.config.extra.get("train_datasets") or [])}


def _record(source: _Source, where: str, rows: int, pilots: int, floor: float | None = None,
            side: str = "pair") -> dict[str, Any]:
    record = {**_source_fields(source), "pilot_data": where, "pilot_side": side, "pilot_inputs": rows,
              "pilots": pilots}
    if floor is not None:
        record["floor"] = floor
    return record


def _fallback_record(source: _Source, floor_quantile: float) -> dict[str, Any]:
    return {**_source_fields(source), "fallback": True, "floor_quantile": floor_quantile, "pilots": 0}


def owned_datasets(model: Any) -> dict[str, int]:
    """Each training dataset of a composed model's piloted experts → that expert (the fallback owns none)."""
    records = model.config.extra.get("composed_from") or []
    return {d: e for e, r in enumerate(records) if not r.get("fallback") for d in r["train_datasets"]}


def _build(reference: _Source, experts: list[tuple[str, dict[str, torch.Tensor]]], top_k: int, router_input: str,
           target_routing: str, records: list[dict[str, Any]]) -> Any:
    """The composed model without its pilots: the reference's backbone and bridge weights, one expert per entry."""
    from tsembed.model import TRAINABLE_WEIGHTS_NAME, TSEmbedModel

    datasets = list(dict.fromkeys(d for r in records for d in r["train_datasets"]))
    extra = {"composed_from": records, "train_datasets": datasets}
    model = TSEmbedModel.from_config(_composed_config(reference, [n for n, _ in experts], top_k, router_input,
                                                      target_routing, extra))
    model.load_trainable_backbone_state(reference.directory / TRAINABLE_WEIGHTS_NAME)
    for e, (name, adapters) in enumerate(experts):
        _copy_expert(model, e, adapters, name)
    return model.eval()


def compose(sources: list[ExpertSource], out: str | Path, suite: str | Path | None = None, pilots_per_expert: int = 4,
            pilot_rows: int = 512, top_k: int = 1, temperature: float = 0.05, seed: int = 0,
            batch_size: int = 64, router_input: str = "text", fallback: ExpertSource | None = None,
            floor_quantile: float = 0.05, target_routing: str = "own",
            pilot_side: str | None = None) -> dict[str, Any]:
    """Join single-adapter models into one pilot-routed MoE-LoRA model written to ``out``; returns the report.

    ``router_input``: ``text`` (the pilots and the router read the base model's embedding of an input's text
    alone: for an image input, its instruction) or ``all`` (of the whole input, image included). ``fallback``: a
    single-adapter model that becomes the last expert, taking every input below its nearest expert's floor (the
    ``floor_quantile`` of that expert's own training inputs' affinity; top-1 only). ``target_routing``: ``query``
    makes the model embed each row's candidates with its query's expert wherever it is evaluated (an index per
    expert; ``moe.target_routing``), ``own`` routes every input by itself. ``pilot_side``: fit the pilots on the
    training rows' queries and positives (``pair``) or queries alone (``query``, see ``PILOT_SIDES``); None: ``query``
    for query-routed targets (only queries are routed), else ``pair``.

    Raises:
        ConfigError: fewer than two experts, repeated names, incompatible models or no pilot data.
    """
    if len(sources) < 2:
        raise ConfigError("compose needs at least two experts (--expert NAME=MODEL_DIR, repeated)")
    names = [s.name for s in sources] + ([fallback.name] if fallback else [])
    if len(set(names)) != len(names):
        raise ConfigError(f"expert names repeat: {names}")
    _check_routing_options(top_k, len(sources), pilots_per_expert, pilot_rows)
    if target_routing not in TARGET_ROUTINGS:
        raise ConfigError(f"--target-routing must be one of {list(TARGET_ROUTINGS)}, got {target_routing!r}")
    if target_routing == "query" and top_k != 1:
        raise ConfigError(f"--target-routing query embeds a row's candidates with its query's one expert: it needs "
                          f"--top-k 1 (got {top_k})")
    pilot_side = pilot_side or ("query" if target_routing == "query" else "pair")
    if router_input not in ("text", "all"):
        raise ConfigError(f"--router-input must be text or all, got {router_input!r}")
    if fallback is not None and (top_k != 1 or not 0.0 <= floor_quantile < 1.0):
        raise ConfigError("--fallback needs --top-k 1 and --floor-quantile in [0, 1) "
                          f"(got top-k {top_k}, floor quantile {floor_quantile})")
    read = [_read_source(s.name, Path(s.model_dir)) for s in sources]
    spare = _read_source(fallback.name, Path(fallback.model_dir)) if fallback else None
    for other in read[1:] + ([spare] if spare else []):
        _check_compatible(read[0], other)
    # the pilots need the base model only: build the composed model first (experts copied in), embed bypassed
    suite_path = Path(suite) if suite else None
    inputs = [pilot_inputs(r, s.pilot_data, suite_path, pilot_rows, pilot_side)
              for r, s in zip(read, sources, strict=True)]
    records = [_record(r, where, len(items), pilots_per_expert, side=pilot_side)
               for r, (items, where) in zip(read, inputs, strict=True)]
    if spare is not None:
        records.append(_fallback_record(spare, floor_quantile))
    experts = [(r.name, r.adapters) for r in read + ([spare] if spare else [])]
    model = _build(read[0], experts, top_k, router_input, target_routing, records)
    pilots, floors = [], []
    for r, (items, _), record in zip(read, inputs, records[:len(read)], strict=True):
        logger.info("expert %s: pilots from %d inputs", r.name, len(items))
        piloted, floor = _pilots(model, items, pilots_per_expert, seed, batch_size,  # the base model's embeddings
                                 floor_quantile if spare else None)
        pilots.append(piloted)
        record["pilots"] = piloted.shape[0]
        if spare is not None:
            record["floor"] = floor
        floors.append(floor)
    if spare is not None:  # no pilots: reached only by falling back
        pilots.append(torch.zeros(1, pilots[0].shape[-1]))
        floors.append(NO_FLOOR)
    model.pilot_router = PilotRouter(_stack(pilots), top_k=top_k, temperature=temperature,
                                     fallback=len(read) if spare else None, floors=torch.tensor(floors))
    report = {"experts": records, "top_k": top_k, "router_input": router_input, "pilots_per_expert": pilots_per_expert,
              "pilot_side": pilot_side, "target_routing": target_routing, "seed": seed}
    if spare is not None:
        report.update(fallback=spare.name, floor_quantile=floor_quantile)
    _save_atomically(model, Path(out), report)
    return report


def add_expert(source: ExpertSource, to: str | Path, suite: str | Path | None = None, pilots_per_expert: int = 4,
               pilot_rows: int = 512, seed: int = 0, batch_size: int = 64) -> dict[str, Any]:
    """Add one expert to a composed model in place (the old experts and their pilots are copied unchanged).

    Raises:
        ConfigError: ``to`` is not a composed model, the name is taken, or the model is incompatible.
    """
    from tsembed.model import TSEmbedModel

    to = Path(to)
    composed = TSEmbedModel.from_pretrained(to)
    if not composed.pilot_routed or composed.pilot_router is None:
        raise ConfigError(f"{to} is not a composed model (moe.router is not 'pilot'); build one with "
                          "`tsembed compose --expert NAME=DIR ... --out DIR`")
    moe = composed.config.moe
    names = list(moe.expert_names)
    if source.name in names:
        raise ConfigError(f"{to} already has an expert named {source.name!r} (experts: {names})")
    records = list(composed.config.extra.get("composed_from") or [])
    reference = _read_source(names[0], to, single=False)  # the experts' backbone, bridge and adapter shape
    new = _read_source(source.name, Path(source.model_dir))
    _check_compatible(reference, new)
    side = next((r.get("pilot_side", "pair") for r in records if not r.get("fallback")), "pair")  # the model's own
    items, where = pilot_inputs(new, source.pilot_data, Path(suite) if suite else None, pilot_rows, side)
    quantile = next((r["floor_quantile"] for r in records if r.get("fallback")), None)  # the fallback's setting
    pilots, floor = _pilots(composed, items, pilots_per_expert, seed, batch_size, quantile)
    experts = [(n, expert_adapters(composed, e)) for e, n in enumerate(names)] + [(new.name, new.adapters)]
    model = _build(reference, experts, moe.top_k, moe.router_input, moe.target_routing,
                   [*records, _record(new, where, len(items), pilots.shape[0], None if quantile is None else floor,
                                      side)])
    model.pilot_router = composed.pilot_router.extended(pilots, floor)  # the old pilots and floors unchanged
    report = {"experts": model.config.extra["composed_from"], "top_k": moe.top_k, "added": new.name}
    _save_atomically(model, to, report)
    return report


def _check_routing_options(top_k: int, experts: int, pilots: int, rows: int) -> None:
    if not 1 <= top_k <= experts:
        raise ConfigError(f"--top-k must be between 1 and the number of experts ({experts}), got {top_k}")
    if pilots < 1:
        raise ConfigError(f"--pilots must be >= 1, got {pilots}")
    if rows < 1:
        raise ConfigError(f"--pilot-rows must be >= 1, got {rows}")


def routing_accuracy(model: Any, suite: str | Path, split: str = "dev", batch_size: int = 64,
                     max_rows: int | None = None) -> dict[str, Any]:
    """How often the pilot router sends a dataset's queries and positives to the expert trained on that dataset.

    A dataset no expert was trained on counts against the expert trained on its condition (where the suite names
    conditions), else it is listed with no accuracy. Returns per-dataset and overall accuracy.
    """
    from tsembed.data.suite import load_suite
    from tsembed.encoding import embed_items

    if model.pilot_router is None:
        raise ConfigError("routing accuracy needs a composed model (a pilot router)")
    owner = owned_datasets(model)
    loaded = load_suite(suite)
    # a dataset no expert trained on (e.g. a reworded out-of-distribution variant) belongs to the expert trained on
    # its condition, where the suite names conditions
    by_condition = {getattr(loaded.datasets.get(d), "condition", None): e for d, e in owner.items()}
    by_condition.pop(None, None)
    for name, info in loaded.datasets.items():
        if name not in owner and getattr(info, "condition", None) in by_condition:
            owner[name] = by_condition[info.condition]
    per_dataset, right, total, right_queries, queries = {}, 0, 0, 0, 0
    for name in loaded.names(split=split):
        split_rows = loaded.eval(name, split=split)
        rows = split_rows.rows[:max_rows] if max_rows else split_rows.rows
        items = [x for row in rows for x in (row.query_input(split_rows.image_root),
                                             row.positive_input(split_rows.image_root))]
        routes = model.pilot_router(embed_items(model, items, batch_size, pilot=True).embeddings).argmax(dim=-1)
        counts = torch.bincount(routes, minlength=model.pilot_router.num_experts).tolist()
        entry: dict[str, Any] = {"inputs": len(items), "routed": dict(zip(model.config.moe.expert_names, counts,
                                                                        strict=True))}
        if name in owner:
            hits = int((routes == owner[name]).sum())
            entry.update(expert=model.config.moe.expert_names[owner[name]], accuracy=hits / max(len(items), 1),
                         query_accuracy=float((routes[0::2] == owner[name]).float().mean()),
                         target_accuracy=float((routes[1::2] == owner[name]).float().mean()))
            right, total = right + hits, total + len(items)
            right_queries += int((routes[0::2] == owner[name]).sum())
            queries += len(rows)
        per_dataset[name] = entry
    # with query-routed targets (tsembed eval --target-routing query) the router decides the queries only
    return {"split": split, "accuracy": right / total if total else None,
            "query_accuracy": right_queries / queries if queries else None, "datasets": per_dataset}
