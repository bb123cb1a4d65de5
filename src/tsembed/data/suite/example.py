"""What a dataset builder yields, and how the dataset's templates turn it into an MMEB row."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from tsembed.data.registry import DatasetInfo
from tsembed.data.rows import EvalRow, TrainRow
from tsembed.data.suite.catalog import EmojiItem


@dataclass(frozen=True)
class Example:
    """Contents before instructions are applied. Text fields fill the template's `{text}` slot;
    image fields are paths relative to the suite root ('' for none).

    Attributes:
        negative: Content of the explicit hard negative (train); None when there is none.
        distractors: Eval candidates besides the positive, hardest first, as (content, image).
        emoji: Emoji shown in the query, positive or negative; recorded for the split audit.
    """

    query: str = ""
    query_image: str = ""
    positive: str = ""
    positive_image: str = ""
    negative: str | None = None
    negative_image: str = ""
    distractors: Sequence[tuple[str, str]] = ()
    emoji: Sequence[EmojiItem] = ()


def to_train_row(info: DatasetInfo, ex: Example) -> TrainRow:
    has_neg = ex.negative is not None
    return TrainRow(
        qry=info.format_query(ex.query),
        qry_image_path=ex.query_image,
        pos_text=info.format_target(ex.positive),
        pos_image_path=ex.positive_image,
        neg_text=info.format_target(ex.negative) if has_neg else "",
        neg_image_path=ex.negative_image if has_neg else "",
    )


def to_eval_row(info: DatasetInfo, ex: Example, max_candidates: int) -> EvalRow:
    """Positive first, then distractors in order, without duplicates of the positive or each other."""
    seen = {(ex.positive, ex.positive_image)}
    candidates = [(ex.positive, ex.positive_image)]
    for cand in ex.distractors:
        if len(candidates) >= max_candidates:
            break
        if cand not in seen:
            seen.add(cand)
            candidates.append(cand)
    return EvalRow(
        qry_text=info.format_query(ex.query),
        qry_img_path=ex.query_image,
        tgt_text=tuple(info.format_target(text) for text, _ in candidates),
        tgt_img_path=tuple(image for _, image in candidates),
    )
