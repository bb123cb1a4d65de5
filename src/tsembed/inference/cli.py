"""``tsembed embed | index build | search | serve | export | compose``: thin wrappers over the inference modules."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from tsembed.cli_options import BACKBONE_PATH
from tsembed.errors import ConfigError

_MODEL = typer.Option(..., "--model", "-m", help="Model directory (save_pretrained or export output).", exists=True,
                      file_okay=False)
_DEVICE = typer.Option("auto", "--device", help="auto | cpu | cuda | cuda:N.")
_BATCH = typer.Option(32, "--batch-size", "-b", min=1, help="Inputs per forward pass.")
_IMAGE_ROOT = typer.Option(None, "--image-root", help="Root of relative image paths [default: the file's folder].")
ROLES = ("query", "document", "none")
EXPORT_FORMATS = ("tsembed", "sentence-transformers")


def _device(device: str, local_rank: int = 0) -> str:
    import torch

    from tsembed.devices import check_device

    if device == "auto":
        return f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    check_device(device)  # a clear ConfigError for cuda on a CPU-only build, not torch's bare AssertionError
    return device


_TASK = typer.Option(None, "--task", help="Task the inputs are embedded for, for models trained with "
                     "moe.task_hints (e.g. retrieval; use the same task for queries and corpus).")


def _check_task(model: Any, task: str | None) -> None:
    """``--task`` must name a task the model's routers know (``model.check_task``, the rule the server uses)."""
    from tsembed.model import check_task

    check_task(task, getattr(model, "task_hints", []), "--task")


def _instruction(model: Any, role: str, instruction: str | None) -> str | None:
    if instruction is not None:
        return instruction
    if role not in ROLES:
        raise ConfigError(f"--role must be one of {ROLES}, got {role!r}")
    return None if role == "none" else (getattr(model.config, f"{role}_instruction", "") or None)


def embed_command(
    model: Path = _MODEL,
    input: Path = typer.Option(..., "--input", "-i", exists=True, help="Rows (.jsonl/.json/.parquet or a folder of "
                               "them) with `text` and/or `image`, optional `id`; other fields are kept."),
    out: Path = typer.Option(..., "--out", "-o", help="Output .parquet (id, text, image, ..., embedding)."),
    image_root: Path | None = _IMAGE_ROOT,
    role: str = typer.Option("document", "--role", help="Which model instruction to use: query | document | none."),
    instruction: str | None = typer.Option(None, "--instruction", help="Instruction overriding --role."),
    task: str | None = _TASK,
    batch_size: int = _BATCH,
    shard_size: int = typer.Option(1024, "--shard-size", min=1, help="Rows per resumable shard."),
    text_field: str = typer.Option("text", "--text-field"),
    image_field: str = typer.Option("image", "--image-field"),
    id_field: str = typer.Option("id", "--id-field"),
    keep_shards: bool = typer.Option(False, "--keep-shards", help="Keep <out>.shards/ after merging."),
    restart: bool = typer.Option(False, "--restart", help="Discard the shards of an earlier run (e.g. by another "
                                 "model) and embed everything again."),
    device: str = _DEVICE,
    no_progress: bool = typer.Option(False, "--no-progress", help="Hide the progress bar."),
    backbone_path: str | None = BACKBONE_PATH,
) -> None:
    """Embed a corpus into a parquet file; resumable, and sharded across ranks under torchrun."""
    from tsembed.inference.corpus import CorpusFields, EmbedJobConfig, distributed_env, gloo_barrier, run_embed_job
    from tsembed.inference.loading import load_model

    rank, world, local_rank = distributed_env()
    loaded = load_model(model, device=_device(device, local_rank), backbone_path=backbone_path)
    _check_task(loaded, task)
    cfg = EmbedJobConfig(
        input=input, out=out, image_root=image_root, instruction=_instruction(loaded, role, instruction), task=task,
        fields=CorpusFields(text_field, image_field, id_field), shard_size=shard_size, batch_size=batch_size,
        rank=rank, world_size=world, keep_shards=keep_shards, model_dir=str(model.resolve()),
        model_fingerprint=loaded.fingerprint or "", restart=restart,
        show_progress=not no_progress, extra_meta={"role": role},
    )
    try:
        result = run_embed_job(loaded, cfg, barrier=gloo_barrier if world > 1 else None)
    finally:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    if result is not None:
        typer.echo(f"wrote {result}")


index_app = typer.Typer(help="Build vector indexes over embeddings.", no_args_is_help=True)


@index_app.command("build")
def index_build_command(
    embeddings: Path = typer.Option(..., "--embeddings", "-e", exists=True, dir_okay=False,
                                    help="Embeddings parquet from `tsembed embed`."),
    out: Path = typer.Option(..., "--out", "-o", help="Index directory to write."),
    kind: str = typer.Option("flat", "--kind", help="flat | hnsw | ivfpq."),
    hnsw_m: int = typer.Option(32, "--hnsw-m", help="HNSW graph degree."),
    ef_search: int = typer.Option(128, "--ef-search", help="HNSW beam width at query time."),
    nlist: int | None = typer.Option(None, "--nlist", help="IVF lists [default ~4·sqrt(N)]."),
    nprobe: int = typer.Option(32, "--nprobe", help="IVF lists probed per query."),
    pq_m: int | None = typer.Option(None, "--pq-m", help="PQ sub-quantisers (divides the dimension)."),
    pq_bits: int = typer.Option(8, "--pq-bits", help="Bits per PQ code."),
    refine: int = typer.Option(0, "--refine", help="ivfpq: re-rank refine·k candidates exactly (keeps the raw "
                               "vectors; 0 = off)."),
) -> None:
    """Build a FAISS index (inner product = cosine) with the rows' metadata beside it."""
    from tsembed.inference.index import IndexConfig, build_index_from_file

    config = IndexConfig(kind=kind, hnsw_m=hnsw_m, ef_search=ef_search, nlist=nlist, nprobe=nprobe, pq_m=pq_m,
                         pq_bits=pq_bits, refine=refine)
    index = build_index_from_file(embeddings, out, config)
    typer.echo(f"built {kind} index of {len(index)} vectors (dim {index.dim}) in {out}")


def search_command(
    index: Path = typer.Option(..., "--index", exists=True, file_okay=False, help="Index directory."),
    query: str | None = typer.Option(None, "--query", "-q", help="Query text."),
    image: Path | None = typer.Option(None, "--image", exists=True, dir_okay=False, help="Query image."),
    k: int = typer.Option(10, "-k", "--top-k", min=1, help="Hits to return."),
    model: Path | None = typer.Option(None, "--model", "-m", help="Model to embed the query [default: the model "
                                      "that embedded the corpus, from the index]."),
    role: str = typer.Option("query", "--role", help="Which model instruction to use: query | document | none."),
    instruction: str | None = typer.Option(None, "--instruction", help="Instruction overriding --role."),
    task: str | None = _TASK,
    as_json: bool = typer.Option(False, "--json", help="One JSON object per hit."),
    device: str = _DEVICE,
    backbone_path: str | None = BACKBONE_PATH,
) -> None:
    """Embed a query (text, image or both) and print the nearest corpus rows."""
    from tsembed.inference.encoder import encode
    from tsembed.inference.index import VectorIndex
    from tsembed.inference.loading import load_model
    from tsembed.inputs import EmbedInput

    if query is None and image is None:
        raise ConfigError("give --query, --image or both")
    vindex = VectorIndex.load(index)
    model_dir = model or (Path(vindex.info["model"]) if vindex.info.get("model") else None)
    if model_dir is None:
        raise ConfigError(f"{index} does not say which model embedded it; pass --model")
    loaded = load_model(model_dir, device=_device(device), backbone_path=backbone_path)
    _check_task(loaded, task)
    vector = encode(loaded, EmbedInput(text=query, image=image), instruction=_instruction(loaded, role, instruction),
                    show_progress_bar=False, task=task)
    for hit in vindex.search(vector, k)[0]:
        if as_json:
            typer.echo(json.dumps(hit.to_dict(), default=str))
        else:
            label = hit.meta.get("text") or hit.meta.get("image") or ""
            typer.echo(f"{hit.rank + 1:>3}  {hit.score:.4f}  {hit.meta.get('id', hit.position)}  {label}")


def serve_command(
    model: Path = _MODEL,
    host: str = typer.Option("127.0.0.1", "--host"),
    port: int = typer.Option(8000, "--port"),
    model_name: str | None = typer.Option(None, "--model-name", help="Id in responses [default: folder name]."),
    api_key: str | None = typer.Option(None, "--api-key", help="Require 'Authorization: Bearer <key>' on /v1/*. "
                                       "Pass it as the TSEMBED_API_KEY environment variable instead: a key on the "
                                       "command line is visible to every user in the process list "
                                       "[default: $TSEMBED_API_KEY]."),
    max_batch_size: int = typer.Option(32, "--max-batch-size", min=1, help="Inputs per forward."),
    max_wait_ms: float = typer.Option(0.0, "--max-wait-ms", min=0.0, help="How long an idle model waits for "
                                      "more requests (batches also fill while the model is busy)."),
    no_batching: bool = typer.Option(False, "--no-batching", help="One request per forward."),
    max_inputs: int = typer.Option(256, "--max-inputs-per-request", min=1),
    max_text_chars: int = typer.Option(16_384, "--max-text-chars", min=1),
    max_instruction_chars: int = typer.Option(2048, "--max-instruction-chars", min=1),
    max_image_bytes: int = typer.Option(10 * 1024 * 1024, "--max-image-bytes", min=1),
    max_image_pixels: int = typer.Option(25_000_000, "--max-image-pixels", min=1),
    max_image_side: int = typer.Option(16_384, "--max-image-side", min=1, help="Longest image side in pixels."),
    max_request_pixels: int = typer.Option(40_000_000, "--max-request-pixels", min=1, help="Decoded image pixels "
                                           "one request may hold (checked from the headers; over it: 413)."),
    max_inflight_pixels: int = typer.Option(64_000_000, "--max-inflight-pixels", min=1, help="Decoded image pixels "
                                            "all requests in flight may hold (over it: 503 with Retry-After)."),
    idle_timeout: float = typer.Option(5.0, "--idle-timeout", min=0.1, help="Seconds before an idle keep-alive "
                                       "connection is closed."),
    read_timeout: float = typer.Option(30.0, "--read-timeout", min=0.1, help="Seconds a client may stall while "
                                       "sending its body (then 408)."),
    read_timeout_total: float = typer.Option(60.0, "--read-timeout-total", min=0.1, help="Seconds the whole "
                                             "request body may take to arrive, however steadily (then 408)."),
    header_timeout: float = typer.Option(10.0, "--header-timeout", min=0.1, help="Seconds a connection may take "
                                         "to send a complete request head (then it is closed)."),
    max_connections: int = typer.Option(1024, "--max-connections", min=1, help="Open connections at once "
                                        "(more get 503 and are closed; lowered to fit the open-file limit)."),
    max_request_tokens: int = typer.Option(131_072, "--max-request-tokens", min=1, help="Tokens one request may "
                                           "hold, counted with the instruction applied (over it: 413)."),
    max_batch_tokens: int = typer.Option(16_384, "--max-batch-tokens", min=1, help="Tokens per model turn; a "
                                         "larger request runs in turns shared with the requests behind it."),
    saturation_s: float = typer.Option(2.0, "--saturation-s", min=0.01, help="/health says saturated (and /ready "
                                       "answers 503) while a turn or a request's wait for one runs longer."),
    public_docs_and_metrics: bool = typer.Option(False, "--public-docs-and-metrics", help="With an API key set, "
                                                 "leave /info, /metrics and /docs open (/health, /ready always are)."),
    vision_cache_mb: float = typer.Option(64.0, "--vision-cache-mb", min=0.0, help="In-memory vision-feature "
                                          "cache size (0: off)."),
    vision_disk_cache: bool = typer.Option(False, "--vision-disk-cache", help="Also keep vision features on "
                                           "disk (off: the server writes no client data to disk)."),
    release_memory_s: float = typer.Option(1.0, "--release-memory-s", min=0.0, help="Once idle, hand freed "
                                           "memory back to the OS at most once per this many seconds (0: never)."),
    device: str = _DEVICE,
    num_threads: int | None = typer.Option(None, "--num-threads", min=1, help="torch CPU threads [default: torch's]."),
    log_level: str = typer.Option("info", "--log-level"),
    backbone_path: str | None = BACKBONE_PATH,
) -> None:
    """Serve the model with an OpenAI-compatible POST /v1/embeddings and TEI's POST /embed (plus /health, /ready,
    /metrics, /v1/models).

    Set TSEMBED_API_KEY in the environment to require a key; serving beyond loopback without one logs a warning.
    """
    import torch

    from tsembed.inference.loading import load_model
    from tsembed.inference.server import ServerSettings, create_app, serve

    if num_threads is not None:
        torch.set_num_threads(num_threads)
    settings = ServerSettings(
        model_name=model_name or model.resolve().name, api_key=api_key, batching=not no_batching,
        max_batch_size=max_batch_size, max_wait_ms=max_wait_ms, max_inputs_per_request=max_inputs,
        max_text_chars=max_text_chars, max_instruction_chars=max_instruction_chars, max_image_bytes=max_image_bytes,
        max_image_pixels=max_image_pixels, max_image_side=max_image_side, max_request_pixels=max_request_pixels,
        max_inflight_pixels=max_inflight_pixels, idle_timeout_s=idle_timeout, read_timeout_s=read_timeout,
        read_timeout_total_s=read_timeout_total, header_timeout_s=header_timeout, max_connections=max_connections,
        max_request_tokens=max_request_tokens, max_batch_tokens=max_batch_tokens, saturation_s=saturation_s,
        public_docs_and_metrics=public_docs_and_metrics, vision_cache_mb=vision_cache_mb,
        vision_disk_cache=vision_disk_cache, release_memory_s=release_memory_s,
    )
    app = create_app(load_model(model, device=_device(device), backbone_path=backbone_path), settings)
    serve(app, host=host, port=port, log_level=log_level)


def export_command(
    model: Path = _MODEL,
    out: Path = typer.Option(..., "--out", "-o", help="Output directory."),
    expert: int | None = typer.Option(None, "--expert", help="Merge this expert (+ shared) into the base weights."),
    peft: bool = typer.Option(False, "--peft", help="Write every expert as a peft LoRA adapter directory."),
    experts: list[int] | None = typer.Option(None, "--experts", help="With --peft: only these experts."),
    prune_below: float | None = typer.Option(None, "--prune-below", help="Drop experts whose top-1 usage on "
                                             "--calibration is below this share."),
    calibration: Path | None = typer.Option(None, "--calibration", exists=True, help="Rows (jsonl/parquet) or a "
                                            "suite directory to measure expert usage on."),
    eval_file: Path | None = typer.Option(None, "--eval-file", exists=True, help="MMEB eval rows: report hit@1 "
                                          "before/after pruning [default: cosine drift]."),
    image_root: Path | None = _IMAGE_ROOT,
    batch_size: int = _BATCH,
    output_format: str = typer.Option("tsembed", "--format", help="With --expert: tsembed (a tsembed model "
                                      "directory) or sentence-transformers (a plain SentenceTransformer folder; "
                                      "text only, minilm-effnet backbone)."),
    backbone_path: str | None = BACKBONE_PATH,
) -> None:
    """Export experts: merged into a plain model (--expert), as peft adapters (--peft), or pruned (--prune-below)."""
    chosen = [expert is not None, peft, prune_below is not None]
    if sum(chosen) != 1:
        raise ConfigError("choose exactly one of --expert E, --peft, --prune-below P")
    if output_format not in EXPORT_FORMATS:
        raise ConfigError(f"--format must be one of {list(EXPORT_FORMATS)}, got {output_format!r}")
    if output_format != "tsembed" and expert is None:
        raise ConfigError(f"--format {output_format} exports one merged expert: give --expert E")
    if expert is not None and output_format == "sentence-transformers":
        from tsembed.inference.export_st import export_sentence_transformers

        typer.echo(f"wrote {export_sentence_transformers(model, out, expert, backbone_path=backbone_path)}")
    elif expert is not None:
        from tsembed.inference.export import export_merged_expert

        typer.echo(f"wrote {export_merged_expert(model, out, expert, backbone_path=backbone_path)}")
    elif peft:
        from tsembed.inference.export import export_peft

        for path in export_peft(model, out, experts or None, backbone_path=backbone_path):
            typer.echo(f"wrote {path}")
    else:
        from tsembed.inference.prune import export_pruned

        if calibration is None:
            raise ConfigError("--prune-below needs --calibration (rows or a suite directory)")
        report = export_pruned(model, out, prune_below, calibration, eval_file, image_root, batch_size,
                               backbone_path=backbone_path)
        typer.echo(json.dumps(report, indent=2))


def compose_command(
    expert: list[str] | None = typer.Option(None, "--expert", help="NAME=MODEL_DIR: a single-adapter model that "
                                            "becomes routed expert NAME (repeat; at least two)."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Directory of the composed model."),
    add: str | None = typer.Option(None, "--add", help="NAME=MODEL_DIR: add one expert to the composed model "
                                   "--to (in place; every other expert and its pilots stay as they are)."),
    to: Path | None = typer.Option(None, "--to", help="With --add: the composed model to extend.", exists=True,
                                   file_okay=False),
    suite: Path | None = typer.Option(None, "--suite", exists=True, file_okay=False, help="Suite whose train "
                                      "splits hold each expert's training datasets (as its config lists them)."),
    pilot_data: list[str] | None = typer.Option(None, "--pilot-data", help="NAME=ROWS: the training rows of "
                                                "expert NAME (MMEB rows, corpus rows or a suite) [default: --suite]."),
    pilots: int = typer.Option(4, "--pilots", min=1, help="Pilot embeddings (k-means centroids) per expert."),
    pilot_rows: int = typer.Option(512, "--pilot-rows", min=1, help="Training rows per expert the pilots "
                                   "are fitted on (their queries and positives, or queries alone: --pilot-side)."),
    target_routing: str = typer.Option("own", "--target-routing", help="own: every input routed by its pilots; "
                                       "query: each row's candidates embedded with its query's expert wherever the "
                                       "model is evaluated (an index per expert; needs --top-k 1)."),
    pilot_side: str | None = typer.Option(None, "--pilot-side", help="pair: fit the pilots on the training rows' "
                                          "queries and positives; query: on their queries alone [default: query with "
                                          "--target-routing query, else pair]. --add keeps the model's own."),
    top_k: int = typer.Option(1, "--top-k", min=1, help="Experts per input (1: every input gets exactly one "
                              "expert's vector, and adding an expert changes no other input's vector)."),
    router_input: str = typer.Option("text", "--router-input", help="What the pilots and the router read: the "
                                     "base model's embedding of an input's text alone (text: for an image input, its "
                                     "instruction) or of the whole input (all)."),
    fallback: str | None = typer.Option(None, "--fallback", help="NAME=MODEL_DIR: a single-adapter model (e.g. one "
                                        "LoRA trained on every task) that takes the inputs the pilots do not "
                                        "recognise: those further from their nearest expert than its floor."),
    floor_quantile: float = typer.Option(0.05, "--floor-quantile", min=0.0, max=0.999, help="With --fallback: "
                                         "each expert's floor is this quantile of its own training inputs' affinity "
                                         "to its pilots (the share of them that would fall back)."),
    routing_split: str | None = typer.Option(None, "--routing-split", help="With --suite: measure how often each "
                                             "dataset of this split (e.g. dev) is routed to its own expert."),
    seed: int = typer.Option(0, "--seed", help="Seed of the pilots' k-means."),
    batch_size: int = _BATCH,
) -> None:
    """Join single-adapter models trained apart into one MoE-LoRA model routed by pilot embeddings (no joint
    training), or add an expert to one (--add NAME=DIR --to DIR).

    Each expert's pilots are k-means centroids of the base model's embeddings of its training inputs; an input
    goes to the expert with the nearest pilot, or, with --fallback, to the fallback expert when even the nearest is
    further than its floor. The sources must share the backbone, its trainable weights (the visual bridge) and the
    adapters' targets, rank and alpha. This costs a second, base-model forward per input.
    """
    from tsembed.inference.compose import ExpertSource, add_expert, compose, parse_expert, routing_accuracy

    if (add is None) == (not expert):
        raise typer.BadParameter("give --expert NAME=DIR (two or more) with --out, or --add NAME=DIR with --to")
    if add is not None and (to is None or out is not None):
        raise typer.BadParameter("--add NAME=DIR extends the composed model given by --to (not --out)")
    if expert and (out is None or to is not None):
        raise typer.BadParameter("--expert NAME=DIR ... writes the composed model to --out (--to goes with --add)")
    data = dict(parse_expert(spec, "--pilot-data") for spec in pilot_data or [])
    given = [parse_expert(spec) for spec in ([add] if add else expert or [])]
    unknown = sorted(set(data) - {name for name, _ in given})
    if unknown:
        raise ConfigError(f"--pilot-data names experts that are not composed: {unknown} "
                          f"(experts: {[name for name, _ in given]})")
    sources = [ExpertSource(name, path, data.get(name)) for name, path in given]
    if fallback is not None and add is not None:
        raise typer.BadParameter("--fallback is set when composing (--expert ... --out); --add keeps the model's own")
    spare = ExpertSource(*parse_expert(fallback, "--fallback")) if fallback else None
    if add is not None:
        assert to is not None
        report = add_expert(sources[0], to, suite, pilots, pilot_rows, seed, batch_size)
        target = to
    else:
        assert out is not None
        report = compose(sources, out, suite, pilots, pilot_rows, top_k, seed=seed, batch_size=batch_size,
                         router_input=router_input, fallback=spare, floor_quantile=floor_quantile,
                         target_routing=target_routing, pilot_side=pilot_side)
        target = out
    if routing_split is not None:
        if suite is None:
            raise ConfigError("--routing-split needs --suite")
        from tsembed.model import TSEmbedModel

        report["routing_accuracy"] = routing_accuracy(TSEmbedModel.from_pretrained(target), suite, routing_split,
                                                      batch_size)
        from tsembed.fileio import atomic_write
        from tsembed.inference.compose import REPORT_NAME

        text = json.dumps(report, indent=2) + "\n"
        atomic_write(target / REPORT_NAME, lambda p: p.write_text(text))
    typer.echo(json.dumps(report, indent=2))


def register(app: typer.Typer) -> None:
    """Add the inference commands to the root ``tsembed`` app."""
    app.command("embed")(embed_command)
    app.add_typer(index_app, name="index")
    app.command("search")(search_command)
    app.command("serve")(serve_command)
    app.command("export")(export_command)
    app.command("compose")(compose_command)
