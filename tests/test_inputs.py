"""The core input type: the batching length key, input identity and the task rule."""

from __future__ import annotations

from pathlib import Path

from tsembed.inputs import IMAGE_LENGTH, EmbedInput, input_key, length_key, with_task


def test_length_key_counts_an_image_as_a_long_text():
    assert length_key(EmbedInput(text="abc")) == 3
    assert length_key(EmbedInput(image="x.png")) == IMAGE_LENGTH == 512
    assert length_key(EmbedInput(text="abc", image="x.png")) == 3 + 512


def test_input_key_is_text_image_and_task():
    a = EmbedInput(text="t", image=Path("img/a.png"), task="vqa")
    assert input_key(a) == ("t", "img/a.png", "vqa")
    assert input_key(a) == input_key(EmbedInput(text="t", image="img/a.png", task="vqa"))  # path or str alike
    assert input_key(a) != input_key(EmbedInput(text="t", image="img/a.png"))  # another task is another input
    assert input_key(EmbedInput(text="t")) == ("t", "", None)
    assert input_key(a, image_id=lambda image: "digest") == ("t", "digest", "vqa")


def test_with_task_fills_in_and_never_overrides():
    own, bare = EmbedInput(text="a", task="vqa"), EmbedInput(text="b")
    assert with_task([own, bare], "retrieval") == [own, EmbedInput(text="b", task="retrieval")]
    assert with_task([own, bare], None) == [own, bare]
