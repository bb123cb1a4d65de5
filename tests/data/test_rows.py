from pathlib import Path

from tsembed.data import EmbedInput, EvalRow, TrainRow
from tsembed.data.rows import resolve_image


def test_train_row_sides_become_embed_inputs_with_resolved_images(tmp_path: Path) -> None:
    row = TrainRow(qry="<|image_1|>\nWhat is it?", qry_image_path="img/a.png", pos_text="a cat")
    assert row.query_input(tmp_path) == EmbedInput("<|image_1|>\nWhat is it?", tmp_path / "img/a.png")
    assert row.positive_input(tmp_path) == EmbedInput("a cat", None)
    assert row.negative_input(tmp_path) is None and not row.has_negative


def test_image_only_side_has_no_text_and_absolute_paths_are_kept(tmp_path: Path) -> None:
    absolute = tmp_path / "x.png"
    row = TrainRow(qry="q", pos_image_path=str(absolute), neg_image_path="n.png")
    assert row.positive_input("/elsewhere") == EmbedInput(None, absolute)
    assert row.negative_input(tmp_path) == EmbedInput(None, tmp_path / "n.png")
    assert resolve_image("", tmp_path) is None
    assert resolve_image("a.png", None) == Path("a.png")


def test_eval_row_candidates_keep_order_and_first_is_positive(tmp_path: Path) -> None:
    row = EvalRow("q", "", ["pos", "<|image_1|>\nimg"], ["", "b.png"])
    assert row.tgt_text == ("pos", "<|image_1|>\nimg")  # lists are frozen into tuples
    targets = row.target_inputs(tmp_path)
    assert targets == [EmbedInput("pos", None), EmbedInput("<|image_1|>\nimg", tmp_path / "b.png")]
    assert row.positive_input(tmp_path) == targets[0]
    assert row.num_candidates == 2


def test_records_round_trip_through_dataclasses() -> None:
    rec = {"qry": "q", "qry_image_path": None, "pos_text": "p", "pos_image_path": ""}
    row = TrainRow.from_record(rec)
    assert row.to_record() == {**rec, "qry_image_path": "", "neg_text": "", "neg_image_path": ""}
    erow = EvalRow.from_record({"qry_text": "q", "qry_img_path": None, "tgt_text": ["a"], "tgt_img_path": [None]})
    assert erow.to_record() == {"qry_text": "q", "qry_img_path": "", "tgt_text": ["a"], "tgt_img_path": [""]}


def test_embed_input_contract_is_text_image_and_task() -> None:
    from dataclasses import fields

    assert [f.name for f in fields(EmbedInput)] == ["text", "image", "task"]
    assert EmbedInput("x").task is None  # rows read from files declare no task until a dataset assigns one
