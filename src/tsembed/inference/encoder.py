"""``encode``: the sentence-transformers-shaped inference API over the one model object.

Inputs go through ``tsembed.encoding.embed_items``: length-sorted batches through ``TSEmbedModel.forward``
(the forward training uses, so serve-time routing is trained routing) in inference and eval mode, returned
in the caller's order.

>>> model = load_model("runs/tsembed/final")
>>> q = encode_query(model, ["a red apple", {"text": "same but green", "image": "apple.png"}])
>>> d = encode_document(model, ["apple.png", "a banana"])
>>> similarity(q, d)  # [2, 2] cosine scores

``encode`` also takes sentence-transformers' keywords with their meaning (``normalize_embeddings``,
``convert_to_tensor``, ``device``, ``precision``, ``prompt``), and ``Encoder`` adds ``prompts`` /
``prompt_name``, ``.device``, ``get_sentence_embedding_dimension()`` and ``similarity_fn_name``:

>>> encoder = Encoder.from_pretrained("runs/tsembed/final")
>>> q = encoder.encode(["a red apple"], normalize_embeddings=True, convert_to_tensor=True, prompt_name="query")
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tsembed.encoding import embed_items
from tsembed.errors import ConfigError
from tsembed.inference.inputs import apply_instruction, instruction_as_prompt, prompt_as_instruction, to_embed_inputs
from tsembed.inputs import with_task

logger = logging.getLogger(__name__)

#: ``precision`` values of ``encode``, as sentence-transformers' ``quantize_embeddings`` names them.
Precision = Literal["float32", "int8", "uint8", "binary", "ubinary"]
PRECISIONS: tuple[str, ...] = get_args(Precision)  # the one spelling: the type's
#: ``Encoder.similarity_fn_name`` values, as sentence-transformers' ``SimilarityFunction`` names them.
SIMILARITY_FNS = ("cosine", "dot", "euclidean", "manhattan")


def quantize_embeddings(embeddings: Any, precision: str, ranges: Any = None,
                        calibration_embeddings: Any = None) -> np.ndarray:
    """sentence-transformers' ``quantize_embeddings``: [N, D] float embeddings to ``precision``.

    * ``float32``: unchanged (as float32);
    * ``int8`` / ``uint8``: each dimension's [min, max] (from ``ranges`` [2, D], else ``calibration_embeddings``,
      else the embeddings themselves, not from a single one) cut into 256 buckets, the bucket index (minus 128
      for int8);
    * ``binary`` / ``ubinary``: one bit per dimension (value > 0), packed 8 to a byte ([N, D/8]), the byte
      minus 128 as int8 for ``binary``, as uint8 for ``ubinary``.

    Raises:
        ConfigError: an unknown ``precision``.
    """
    return _quantize(embeddings, checked_precision(precision), ranges, calibration_embeddings)


def checked_precision(precision: str) -> str:
    """``precision`` if it is one of ``PRECISIONS``, else a ConfigError listing them (checked before any work)."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
    return precision


def _quantize(embeddings: Any, precision: str, ranges: Any, calibration_embeddings: Any) -> np.ndarray:
    """``quantize_embeddings`` for a ``precision`` already checked."""
    if isinstance(embeddings, torch.Tensor):
        embeddings = embeddings.detach().cpu().numpy()
    embeddings = np.asarray(embeddings, dtype=np.float32)
    if precision == "float32":
        return embeddings
    if precision in ("int8", "uint8"):
        if ranges is None:
            source = embeddings if calibration_embeddings is None else np.asarray(calibration_embeddings, np.float32)
            if calibration_embeddings is None and (embeddings.ndim == 1 or len(embeddings) == 1):
                raise ConfigError(f"cannot compute {precision} quantisation ranges from a single embedding; encode "
                                  "a batch, or quantise with `ranges` or `calibration_embeddings`")
            if 0 < len(source) < 100:
                logger.warning("computing %s quantisation buckets from %d embedding(s); pass more (ranges or "
                               "calibration embeddings) for stable buckets", precision, len(source))
            ranges = np.vstack((source.min(axis=0), source.max(axis=0))) if len(source) else np.zeros((2, 0))
        ranges = np.asarray(ranges, dtype=np.float32)
        starts = ranges[0]
        steps = (ranges[1] - starts) / 255
        steps = np.where(steps == 0, 1, steps)  # a constant dimension: bucket 0, not a division by zero
        buckets = np.clip(np.floor((embeddings - starts) / steps), 0, 255)
        return buckets.astype(np.uint8) if precision == "uint8" else (buckets - 128).astype(np.int8)
    packed = np.packbits(embeddings > 0, axis=-1)  # binary / ubinary
    return packed if precision == "ubinary" else (packed.astype(np.int16) - 128).astype(np.int8)


@dataclass
class Routing:
    """The router's decision per input: signature [N, L·E] and per-layer probabilities {layer: [N, E]}."""

    signature: Any
    layer_probs: dict[str, Any]

    def top1(self) -> dict[str, Any]:
        """Per layer, the top-1 expert of each input [N]."""
        return {name: probs.argmax(-1) for name, probs in self.layer_probs.items()}


def truncate_embeddings(embeddings: torch.Tensor, dim: int | None, normalize: bool) -> torch.Tensor:
    """Keep the first ``dim`` dimensions (Matryoshka-style) and L2-normalise again if asked."""
    if dim is not None:
        if not 1 <= dim <= embeddings.shape[-1]:
            raise ConfigError(f"truncate_dim must be in [1, {embeddings.shape[-1]}], got {dim}")
        embeddings = embeddings[..., :dim]
    return F.normalize(embeddings, dim=-1) if normalize else embeddings


def _show_progress(flag: bool | None, num_batches: int) -> bool:
    if flag is not None:
        return flag
    return num_batches > 1 and logging.getLogger("tsembed").getEffectiveLevel() <= logging.INFO


def encode(
    model: nn.Module,
    inputs: Any,
    instruction: str | None = None,
    batch_size: int = 32,
    normalize: bool = True,
    convert_to_numpy: bool = True,
    show_progress_bar: bool | None = None,
    return_routing: bool = False,
    truncate_dim: int | None = None,
    task: str | None = None,
    *,
    normalize_embeddings: bool | None = None,
    convert_to_tensor: bool = False,
    device: str | torch.device | None = None,
    precision: Precision = "float32",
    prompt: str | None = None,
) -> Any:
    """Embed texts, images and text+image inputs.

    Args:
        model: a ``TSEmbedModel`` (e.g. from ``load_model``).
        inputs: one input or a list of them: ``str``, PIL image, image path, ``{"text", "image"}`` dict
            or ``EmbedInput`` (see ``tsembed.inference.inputs``).
        instruction: prepended to each input (``"{text}"`` marks the content's slot); None: none.
        batch_size: inputs per forward pass.
        normalize: L2-normalise the output (again after ``truncate_dim``).
        convert_to_numpy: numpy arrays (float32) instead of CPU torch tensors.
        show_progress_bar: tqdm bar; None shows it for multi-batch calls when logging is at INFO.
        return_routing: also return a ``Routing`` (signature and per-layer router probabilities).
        truncate_dim: keep only the first dimensions.
        task: the task every input is embedded for (models trained with ``moe.task_hints``; e.g.
            ``"retrieval"`` for both the queries and the documents of a search); an ``EmbedInput`` that
            declares its own task keeps it (``tsembed.inputs.with_task``, the rule evaluation follows too).
        normalize_embeddings: sentence-transformers' name for ``normalize``; when given it wins.
        convert_to_tensor: a torch tensor (CPU), whatever ``convert_to_numpy`` says (as in sentence-transformers).
        device: move the model there first (as sentence-transformers does); CUDA without CUDA is a ConfigError.
        precision: ``float32``, ``int8``, ``uint8``, ``binary`` or ``ubinary``: ``quantize_embeddings`` applied
            after normalisation, with int8/uint8 buckets from this call's embeddings (as sentence-transformers).
        prompt: a sentence-transformers prompt, a prefix (``prompt + text``; ``{text}`` in it marks the slot
            instead); an alternative to ``instruction``, not used with it.

    Returns:
        [N, D] embeddings for a list, [D] for a single input; with ``return_routing`` a tuple
        ``(embeddings, routing)`` (routing None for a model without adapters).

    Raises:
        DataError: an input cannot be read (names its position), e.g. a string that looks like an image path
            but names no file.
        ConfigError: ``instruction`` and ``prompt`` both given, an unknown ``precision`` or device.
    """
    if prompt is not None:
        if instruction:
            raise ConfigError("pass `instruction` or `prompt` (a sentence-transformers prefix), not both")
        instruction = prompt_as_instruction(prompt)
    if normalize_embeddings is not None:
        normalize = bool(normalize_embeddings)
    precision = checked_precision(precision)  # before the model runs
    if device is not None:
        from tsembed.devices import check_device

        model.to(check_device(device))
    single = not isinstance(inputs, list | tuple)
    items = [apply_instruction(instruction, x) for x in to_embed_inputs([inputs] if single else list(inputs))]
    items = with_task(items, task)
    num_batches = -(-len(items) // max(batch_size, 1))
    bar = None
    if _show_progress(show_progress_bar, num_batches):
        from tqdm.auto import tqdm

        bar = tqdm(total=len(items), desc="Encoding", unit="input")
    try:
        out = embed_items(model, items, batch_size, return_routing, on_batch=None if bar is None else bar.update)
    finally:
        if bar is not None:
            bar.close()
    embeddings = truncate_embeddings(out.embeddings, truncate_dim, normalize)
    routing = None
    if out.signature is not None:
        routing = Routing(out.signature, dict(out.layer_probs))
    if precision != "float32":
        quantized = _quantize(embeddings, precision, None, None)
        embeddings = torch.from_numpy(quantized) if convert_to_tensor or not convert_to_numpy else quantized
    elif convert_to_numpy and not convert_to_tensor:
        embeddings = embeddings.numpy().astype(np.float32, copy=False)
    if convert_to_numpy and not convert_to_tensor and routing is not None:
        routing = Routing(routing.signature.numpy(), {k: v.numpy() for k, v in routing.layer_probs.items()})
    if single:
        embeddings = embeddings[0]
        if routing is not None:
            routing = Routing(routing.signature[0], {k: v[0] for k, v in routing.layer_probs.items()})
    return (embeddings, routing) if return_routing else embeddings


def _config_instruction(model: nn.Module, name: str) -> str:
    config = getattr(model, "config", None)
    return getattr(config, name, "") or ""


def encode_query(model: nn.Module, inputs: Any, **kwargs: Any) -> Any:
    """``encode`` with the model's ``query_instruction`` (unless ``instruction=`` or ``prompt=`` is given)."""
    if kwargs.get("prompt") is None:
        kwargs.setdefault("instruction", _config_instruction(model, "query_instruction"))
    return encode(model, inputs, **kwargs)


def encode_document(model: nn.Module, inputs: Any, **kwargs: Any) -> Any:
    """``encode`` with the model's ``document_instruction`` (unless ``instruction=`` or ``prompt=`` is given)."""
    if kwargs.get("prompt") is None:
        kwargs.setdefault("instruction", _config_instruction(model, "document_instruction"))
    return encode(model, inputs, **kwargs)


def _as_rows(x: Any) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x) if isinstance(x, np.ndarray | list | tuple) else x).float()
    return t.reshape(-1, t.shape[-1])


def similarity(a: Any, b: Any, fn: str = "cosine") -> torch.Tensor:
    """Similarity matrix [N, M] of two sets of embeddings ([D] vectors count as one row), a torch tensor
    whatever the inputs are (numpy, torch or lists), as sentence-transformers' ``similarity`` returns.

    ``fn``: ``cosine`` (default), ``dot``, ``euclidean`` or ``manhattan`` (the negative distances, so higher is
    more similar for all four, as in sentence-transformers).
    """
    ta, tb = _as_rows(a), _as_rows(b)
    if fn == "cosine":
        return F.normalize(ta, dim=-1) @ F.normalize(tb, dim=-1).T
    if fn == "dot":
        return ta @ tb.T
    if fn == "euclidean":
        return -torch.cdist(ta, tb, p=2.0)
    if fn == "manhattan":
        return -torch.cdist(ta, tb, p=1.0)
    raise ConfigError(f"similarity function must be one of {list(SIMILARITY_FNS)}, got {fn!r}")


class Encoder:
    """A loaded model with the ``encode`` family as methods (sentence-transformers shape).

    >>> encoder = Encoder.from_pretrained("runs/tsembed/final")
    >>> encoder.encode_query("a red apple").shape
    (384,)
    """

    def __init__(self, model: nn.Module, prompts: dict[str, str] | None = None,
                 default_prompt_name: str | None = None, similarity_fn_name: str = "cosine",
                 truncate_dim: int | None = None) -> None:
        """``prompts``: named sentence-transformers prompts (prefixes; ``{text}`` marks a slot instead); by
        default ``query`` and ``document`` from the model's instructions, so ``prompt_name="query"`` is
        ``encode_query``. ``default_prompt_name``: the prompt ``encode`` uses when given none.
        ``truncate_dim``: every ``encode`` keeps this many dimensions unless it says otherwise."""
        self.model = model.eval()
        if getattr(model, "query_routed", False):
            logger.warning("this model embeds a candidate with its query's experts (moe.target_routing='query'), but "
                           "encode() routes every input by itself: embed a corpus once per route, each inside "
                           "tsembed.moe.forced_routes(model.backbone, chosen_routes(<the queries' routing>)), as "
                           "`tsembed eval` does")
        if prompts is None:
            prompts = {name: instruction_as_prompt(_config_instruction(model, f"{name}_instruction"))
                       for name in ("query", "document")}
        self.prompts = dict(prompts)
        if default_prompt_name is not None and default_prompt_name not in self.prompts:
            raise ConfigError(f"default_prompt_name {default_prompt_name!r} is not in prompts {sorted(self.prompts)}")
        self.default_prompt_name = default_prompt_name
        self.similarity_fn_name = similarity_fn_name
        self.truncate_dim = truncate_dim

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str | torch.device | None = None,
                        backbone_path: str | Path | None = None, **kwargs: Any) -> Encoder:
        """Load a saved model; ``backbone_path`` overrides its backbone reference (directory or cached Hub id);
        ``kwargs`` go to ``Encoder`` (``prompts``, ``similarity_fn_name``, ...)."""
        from tsembed.inference.loading import load_model

        return cls(load_model(directory, device=device, backbone_path=backbone_path), **kwargs)

    @property
    def similarity_fn_name(self) -> str:
        """``cosine`` (default), ``dot``, ``euclidean`` or ``manhattan``: what ``similarity`` computes."""
        return self._similarity_fn_name

    @similarity_fn_name.setter
    def similarity_fn_name(self, name: str) -> None:
        name = getattr(name, "value", name)  # sentence-transformers' SimilarityFunction enum
        if name not in SIMILARITY_FNS:
            raise ConfigError(f"similarity_fn_name must be one of {list(SIMILARITY_FNS)}, got {name!r}")
        self._similarity_fn_name = name

    @property
    def device(self) -> torch.device:
        """Where the model's weights are (and where ``encode`` computes)."""
        param = next(self.model.parameters(), None)
        return param.device if param is not None else torch.device("cpu")

    def to(self, device: str | torch.device) -> Encoder:
        from tsembed.devices import check_device

        self.model.to(check_device(device))
        return self

    def get_sentence_embedding_dimension(self) -> int | None:
        """The size of ``encode``'s vectors (``truncate_dim`` when set)."""
        dim = getattr(getattr(self.model, "backbone", None), "hidden_size", None)
        if dim is None:
            return None
        return min(int(dim), self.truncate_dim) if self.truncate_dim else int(dim)

    def _prompt(self, kwargs: dict[str, Any], default_name: str | None) -> dict[str, Any]:
        """Resolve ``prompt_name`` (sentence-transformers' rules: ``prompt`` wins over it; an unknown name is an
        error; with neither, ``default_name`` when it is in ``prompts``) into ``prompt``."""
        prompt_name = kwargs.pop("prompt_name", None)
        kwargs.setdefault("truncate_dim", self.truncate_dim)
        if kwargs.get("prompt") is not None:
            if prompt_name is not None:
                logger.warning("encode got both prompt and prompt_name; prompt_name %r is ignored", prompt_name)
            return kwargs
        if prompt_name is None and "instruction" not in kwargs:
            prompt_name = default_name if default_name in self.prompts else self.default_prompt_name
        if prompt_name is not None:
            if prompt_name not in self.prompts:
                raise ConfigError(f"prompt name {prompt_name!r} not found in the prompts {sorted(self.prompts)}")
            kwargs["prompt"] = self.prompts[prompt_name]
        return kwargs

    def encode(self, inputs: Any, **kwargs: Any) -> Any:
        """``encode`` on this model; also takes ``prompt_name`` (a key of ``prompts``)."""
        return encode(self.model, inputs, **self._prompt(kwargs, None))

    def encode_query(self, inputs: Any, **kwargs: Any) -> Any:
        """``encode`` with the ``query`` prompt (the model's query instruction) unless told otherwise."""
        return encode(self.model, inputs, **self._prompt(kwargs, "query"))

    def encode_document(self, inputs: Any, **kwargs: Any) -> Any:
        """``encode`` with the ``document`` prompt (the model's document instruction) unless told otherwise."""
        return encode(self.model, inputs, **self._prompt(kwargs, "document"))

    def similarity(self, a: Any, b: Any) -> torch.Tensor:
        """[N, M] scores by ``similarity_fn_name``, a torch tensor (as sentence-transformers returns)."""
        return similarity(a, b, self.similarity_fn_name)

    def similarity_pairwise(self, a: Any, b: Any) -> torch.Tensor:
        """[N] scores of row i of ``a`` with row i of ``b``."""
        ta, tb = _as_rows(a), _as_rows(b)
        if self.similarity_fn_name == "cosine":
            return (F.normalize(ta, dim=-1) * F.normalize(tb, dim=-1)).sum(-1)
        if self.similarity_fn_name == "dot":
            return (ta * tb).sum(-1)
        return -(ta - tb).norm(p=2.0 if self.similarity_fn_name == "euclidean" else 1.0, dim=-1)

    def save_pretrained(self, directory: str | Path, eval_results: Any = None) -> Path:
        """The model directory plus its README model card; ``eval_results`` (``EvalResults``, dict or JSON path)
        become the card's model-index."""
        return Path(self.model.save_pretrained(directory, eval_results=eval_results))
