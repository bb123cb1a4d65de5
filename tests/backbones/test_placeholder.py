import pytest
from PIL import Image

from tsembed.backbones.placeholder import IMAGE_PLACEHOLDER, split_input, split_inputs
from tsembed.errors import DataError
from tsembed.inputs import EmbedInput

IMG = Image.new("RGB", (8, 8))


def test_image_in_the_middle_of_the_text() -> None:
    seg = split_input(EmbedInput(f"Question: {IMAGE_PLACEHOLDER} what is this?", IMG), 0)
    assert (seg.before, seg.after, seg.has_image) == ("Question: ", " what is this?", True)
    assert seg.text == "Question: what is this?"


def test_image_without_placeholder_goes_first() -> None:
    seg = split_input(EmbedInput("Represent the given image.", IMG), 0)
    assert (seg.before, seg.after) == ("", "Represent the given image.")


def test_image_only_and_text_only() -> None:
    image_only = split_input(EmbedInput(image=IMG), 0)
    text_only = split_input(EmbedInput("a cat"), 0)
    assert (image_only.before, image_only.after, image_only.has_image) == ("", "", True)
    assert (text_only.before, text_only.after, text_only.has_image) == ("a cat", "", False)


@pytest.mark.parametrize(
    ("item", "message"),
    [
        (EmbedInput(), "input 3: has neither text nor image"),
        (EmbedInput(f"{IMAGE_PLACEHOLDER} x"), "input 3: text has the <|image_1|> placeholder but the input has no"),
        (EmbedInput(f"{IMAGE_PLACEHOLDER} {IMAGE_PLACEHOLDER}", IMG), "input 3: text has 2 <|image_1|>"),
        ("just a string", "input 3: expected an EmbedInput"),
    ],
)
def test_bad_inputs_name_their_position(item: object, message: str) -> None:
    with pytest.raises(DataError, match=message.replace("|", "\\|")):
        split_input(item, 3)  # type: ignore[arg-type]


def test_empty_batch_is_an_error() -> None:
    with pytest.raises(DataError, match="empty batch"):
        split_inputs([])
