"""Dataset builders of the offline suite: `(context, split, rng, n) -> iterator of Example`."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator

from tsembed.data.suite.context import BuildContext
from tsembed.data.suite.example import Example
from tsembed.data.suite.tasks import classification, conflict, grounding, retrieval, vqa

Builder = Callable[[BuildContext, str, random.Random, int], Iterator[Example]]

#: Suite dataset name -> builder; the names match `tsembed.data.registry.SUITE_KINDS`.
BUILDERS: dict[str, Builder] = {
    "EmojiGroup": classification.emoji_group,
    "EmojiSubgroup": classification.emoji_subgroup,
    "SkinTone": classification.skin_tone,
    "EmojiGroupGray": classification.emoji_group_gray,
    "CountVQA": vqa.count_vqa,
    "LeftOfVQA": vqa.left_of_vqa,
    "BackgroundVQA": vqa.background_vqa,
    "AboveVQA": vqa.above_vqa,
    "NameToImage": retrieval.name_to_image,
    "ImageToName": retrieval.image_to_name,
    "SkinToneEdit": retrieval.skin_tone_edit,
    "GenderEdit": retrieval.gender_edit,
    "ShortcodeToImage": retrieval.shortcode_to_image,
    "EmojiGrounding": grounding.emoji_grounding,
    "RelationalGrounding": grounding.relational_grounding,
    **conflict.BUILDERS,
}
