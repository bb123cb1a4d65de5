"""What a request costs the model thread, in tokens, counted after the instruction is applied.

Like TEI's ``--max-batch-tokens``: a request whose inputs hold more than ``max_request_tokens`` tokens in all
is refused (413) before it is queued, and the batcher runs an admitted request in turns of at most
``max_batch_tokens`` tokens, so a large request shares the one model thread with the requests behind it
instead of holding it for seconds.

Tokens are counted with the backbone's own tokenizer when it has one (truncated at ``max_length``, as the
forward truncates); otherwise a text counts one token per character (an upper bound for every tokenizer the
backbones here use on text), capped at ``max_length``. An image input counts ``max_length`` tokens: its
visual tokens are not known before the image is decoded, and no input runs past ``max_length``.
"""

from __future__ import annotations

import copy
import logging
import threading
from collections.abc import Sequence
from typing import Any

from torch import nn

from tsembed.inputs import EmbedInput

logger = logging.getLogger(__name__)

FALLBACK_MAX_LENGTH = 512


def max_tokens(model: nn.Module) -> int:
    """Tokens one input may hold: the backbone's ``max_length`` (512 when it does not say)."""
    value = getattr(getattr(model, "backbone", None), "max_length", None)
    return int(value) if isinstance(value, int) and value > 0 else FALLBACK_MAX_LENGTH


class TokenCounter:
    """Counts what inputs cost in tokens (see the module docstring); safe to call from any thread.

    It tokenizes with its own copy of the backbone's tokenizer, one call at a time: a fast tokenizer whose
    truncation settings change under a concurrent call raises "Already borrowed", and the model thread's
    copy must never see that.
    """

    def __init__(self, model: nn.Module) -> None:
        self.limit = max_tokens(model)
        tokenizer = getattr(getattr(model, "backbone", None), "tokenizer", None)
        self.tokenizer: Any = None
        if callable(tokenizer):
            try:
                self.tokenizer = copy.deepcopy(tokenizer)
            except Exception:  # a tokenizer that cannot be copied: count characters instead
                logger.info("the tokenizer cannot be copied; request costs are counted in characters")
        self._lock = threading.Lock()

    def __call__(self, items: Sequence[EmbedInput]) -> list[int]:
        """Tokens each input will cost the forward (at least 1 each, at most the backbone's ``max_length``)."""
        texts = [item.text or "" for item in items]
        counts: list[int] | None = None
        if self.tokenizer is not None and any(texts):
            try:
                with self._lock:
                    ids = self.tokenizer(texts, truncation=True, max_length=self.limit)["input_ids"]
                counts = [len(i) for i in ids]
            except Exception:  # a tokenizer that cannot count this way: fall back to the character bound
                counts = None
        if counts is None:
            counts = [len(t) for t in texts]
        return [self.limit if item.image is not None else max(1, min(self.limit, n))
                for item, n in zip(items, counts, strict=True)]
