"""Valid MMEB records to start a test from; override the fields a test is about."""

from __future__ import annotations


def train_record(**overrides: object) -> dict:
    """A valid MMEB train record (image query -> text positive) with fields overridden."""
    rec = {
        "qry": "<|image_1|>\nRepresent the given image for classification.",
        "qry_image_path": "img/a.png",
        "pos_text": "red",
        "pos_image_path": "",
        "neg_text": "blue",
        "neg_image_path": "",
    }
    rec.update(overrides)
    return rec


def eval_record(**overrides: object) -> dict:
    """A valid MMEB eval record (text query -> image candidates) with fields overridden."""
    rec = {
        "qry_text": "Retrieve the image: red square",
        "qry_img_path": "",
        "tgt_text": ["<|image_1|>\nRepresent the given image.", "<|image_1|>\nRepresent the given image."],
        "tgt_img_path": ["img/a.png", "img/b.png"],
    }
    rec.update(overrides)
    return rec
