"""Eval files whose positive cannot be first are rejected, naming file, row and field."""

import pytest

from tsembed.errors import DataError
from tsembed.evaluation import evaluate, load_eval_set, resolve_eval_sets

from .helpers import toy_model, write_jsonl

GOOD = {
    "qry_text": "find red",
    "qry_img_path": "",
    "tgt_text": ["red car", "blue car", "green car"],
    "tgt_img_path": ["", "", ""],
}


def _load(tmp_path, rows, **kwargs):
    path = write_jsonl(tmp_path / "Toy.jsonl", rows)
    return path, load_eval_set(resolve_eval_sets(path)[0], **kwargs)


def _error(tmp_path, bad: dict) -> str:
    path = write_jsonl(tmp_path / "Toy.jsonl", [GOOD, {**GOOD, **bad}])
    with pytest.raises(DataError) as info:
        load_eval_set(resolve_eval_sets(path)[0])
    message = str(info.value)
    assert str(path) in message and "row 2" in message and "row 1:" not in message
    return message


def test_explicit_label_not_first_is_rejected(tmp_path):
    message = _error(tmp_path, {"pos_index": 2})
    assert "`pos_index`" in message and "candidate 2" in message and "first" in message


def test_label_text_matching_another_candidate_is_rejected(tmp_path):
    message = _error(tmp_path, {"label": "blue car"})
    assert "`label`" in message and "candidate 1" in message


def test_duplicated_positive_is_rejected(tmp_path):
    message = _error(tmp_path, {"tgt_text": ["red car", "blue car", "red car"]})
    assert "`tgt_text[0]`" in message and "repeated as candidate 2" in message


def test_empty_positive_is_rejected(tmp_path):
    message = _error(tmp_path, {"tgt_text": ["", "blue car", "green car"]})
    assert "`tgt_text[0]`" in message and "empty" in message


def test_consistent_labels_and_unknown_fields(tmp_path):
    _, loaded = _load(
        tmp_path, [{**GOOD, "pos_index": 0}, {**GOOD, "label": "red car"}, {**GOOD, "label": "red"}]
    )  # a bare class name says nothing: accepted
    assert len(loaded.rows) == 3
    message = _error(tmp_path, {"qry_img": "x.png"})  # typos are still caught
    assert "`qry_img`" in message and "unknown field" in message


def test_skip_invalid_drops_and_counts(tmp_path):
    _, loaded = _load(tmp_path, [GOOD, {**GOOD, "pos_index": 1}, GOOD], skip_invalid=True)
    assert len(loaded.rows) == 2 and loaded.report.num_skipped == 1 and loaded.report.bad_rows == [2]


def test_evaluate_rejects_before_encoding(tmp_path):
    path = write_jsonl(tmp_path / "Toy.jsonl", [GOOD, {**GOOD, "positive_index": 1}])
    with pytest.raises(DataError, match="positive_index"):
        evaluate(toy_model(adapters=False), path, progress=False)
    results = evaluate(toy_model(adapters=False), path, progress=False, skip_invalid=True)
    assert results.datasets[0].num_rows == 1 and results.datasets[0].num_skipped == 1


def test_non_utf8_byte_is_a_data_error_and_skippable(tmp_path):
    path = write_jsonl(tmp_path / "Toy.jsonl", [GOOD, GOOD, GOOD])
    path.write_bytes(path.read_bytes().replace(b"find red", b"find r\xe9d", 2))  # rows 1 and 2
    with pytest.raises(DataError, match=r"Toy.jsonl row 2: not valid UTF-8: byte 0xe9 at byte offset \d+"):
        load_eval_set(resolve_eval_sets(path)[0])
    loaded = load_eval_set(resolve_eval_sets(path)[0], skip_invalid=True)
    assert len(loaded.rows) == 1 and loaded.report.num_skipped == 2 and loaded.report.bad_rows == [1, 2]
