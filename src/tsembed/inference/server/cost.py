"""What a request costs the model thread, in tokens, counted after the instruction is applied.

Like TEI's ``--max-batch-tokens``: a request whose inputs hold more than ``max_request_tokens`` tokens in all
is refused (413) before it is queued, and the batcher runs an admitted request in turns of at most
``max_batch_tokens`` tokens, so a large request shares the one model thread with the requests behind it
instead of holding it for seconds.

A turn also counts the characters its tokenizer must read (``turn_costs``: a text of 16k characters costs a
turn 2,000 tokens' worth however few of its tokens are kept).

Tokens are counted with the backbone's own tokenizer when it has one (truncated at ``max_length``, as the
forward truncates; a text past ``PREFIX_CHARS_PER_TOKEN × max_length`` characters counts ``max_length``
untokenized); otherwise a text counts one token per character (an upper bound for every tokenizer the
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
PREFIX_CHARS_PER_TOKEN = 8  # characters of a text tokenized per token of max_length when counting


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
        """Tokens each input will cost the forward (at least 1 each, at most the backbone's ``max_length``).

        A text longer than ``PREFIX_CHARS_PER_TOKEN × max_length`` characters counts as ``max_length`` untokenized
        (a tokenizer reads the whole text even when it truncates: counting 256 texts of 16k characters took
        seconds); so does an image input. Only shorter texts are tokenized.
        """
        longest = PREFIX_CHARS_PER_TOKEN * self.limit
        costs = [self.limit] * len(items)
        short = [i for i, item in enumerate(items) if item.image is None and len(item.text or "") <= longest]
        texts = [items[i].text or "" for i in short]
        counts: list[int] | None = None
        if self.tokenizer is not None and texts:
            try:
                with self._lock:
                    ids = self.tokenizer(texts, truncation=True, max_length=self.limit)["input_ids"]
                counts = [len(i) for i in ids]
            except Exception:  # a tokenizer that cannot count this way: fall back to the character bound
                counts = None
        if counts is None:
            counts = [len(t) for t in texts]
        for i, n in zip(short, counts, strict=True):
            costs[i] = max(1, min(self.limit, n))
        return costs


def turn_costs(items: Sequence[EmbedInput], costs: Sequence[int]) -> list[int]:
    """What each input costs a turn of the model thread: its tokens, or for a long text one token per
    ``PREFIX_CHARS_PER_TOKEN`` characters when that is more, since the model thread's tokenizer reads the whole
    text however much of it is kept (256 texts of 16k characters cost seconds of tokenizing at 128 tokens each)."""
    return [max(cost, len(item.text or "") // PREFIX_CHARS_PER_TOKEN) for item, cost in zip(items, costs, strict=True)]
