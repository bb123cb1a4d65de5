"""The conflict suite's opt-in gender stream: the same person emoji in any gender vs another emoji of the same
gender, over one shared gallery whose candidates all show the query's skin tone (docs/design.md §5.2)."""

import json
from pathlib import Path

import pytest

from tsembed.data.registry import CONFLICT_STREAMS, DATASETS, DEFAULT_CONFLICT_STREAMS, conflict_pairs
from tsembed.data.suite import Suite, build_suite
from tsembed.data.suite.catalog import EmojiItem, load_catalog
from tsembed.data.suite.config import SuiteConfig
from tsembed.data.suite.render import EmojiRenderer
from tsembed.data.suite.tasks.conflict import GENDER_MIN_DIFFERENCE, visible_difference
from tsembed.errors import ConfigError
from tsembed.experiments.study.selection import condition_of

ALL_STREAMS = ("tone", "tint", "text", "gender")
GENDER_SETS = list(CONFLICT_STREAMS["gender"])
TINY = {"max_train_per_dataset": 10, "max_eval_per_dataset": 8, "pool_size": 10, "dev_fraction": 0.15,
        "kind": "conflict", "conflict_streams": ALL_STREAMS}


@pytest.fixture(scope="module")
def gender_suite(tmp_path_factory: pytest.TempPathFactory) -> Suite:
    return build_suite(tmp_path_factory.mktemp("gender") / "s", seed=0, progress=False, datasets=GENDER_SETS, **TINY)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _meta(suite: Suite, name: str, split: str) -> list[list[EmojiItem]]:
    codes = {it.code: it for it in load_catalog()}
    path = suite.root / suite.manifest["datasets"][name]["provenance"][split]
    return [[codes[c] for c in json.loads(line)["emoji"]] for line in path.read_text().splitlines()]


def test_registry_streams_and_conditions() -> None:
    assert conflict_pairs() == {k: v for k, v in conflict_pairs(ALL_STREAMS).items() if k != "role-vs-gender"}
    assert conflict_pairs(ALL_STREAMS)["role-vs-gender"] == ("GenderSameEmoji", "GenderSameGender")
    assert SuiteConfig().conflict_streams == DEFAULT_CONFLICT_STREAMS
    assert (condition_of("GenderSameEmoji"), condition_of("GenderSameGender")) == ("role", "gender")
    assert condition_of("GenderSameGenderReworded") is None and DATASETS["GenderSameGenderReworded"].ood


def test_manifest_lists_the_gender_pair_and_its_streams(gender_suite: Suite) -> None:
    m = gender_suite.manifest
    assert m["pairs"]["role-vs-gender"] == ["GenderSameEmoji", "GenderSameGender"]
    assert m["config"]["conflict_streams"] == list(ALL_STREAMS)
    assert SuiteConfig(**m["config"]).conflict_streams == ALL_STREAMS  # as `tsembed align` reads it back
    assert set(gender_suite.names(ood=True)) == {"GenderSameEmojiReworded", "GenderSameGenderReworded"}
    assert {n: d["condition"] for n, d in m["datasets"].items()}["GenderSameGender"] == "gender"
    assert "gender pair" in (gender_suite.root / "README.md").read_text()


@pytest.mark.parametrize("split", ["eval", "dev"])
def test_both_conditions_rank_one_gallery_whose_positives_trap_each_other(gender_suite: Suite, split: str) -> None:
    xs = gender_suite.eval("GenderSameEmoji", split=split).rows
    ys = gender_suite.eval("GenderSameGender", split=split).rows
    assert xs and len(xs) == len(ys)
    for x, y in zip(xs, ys, strict=True):
        assert x.qry_img_path == y.qry_img_path and x.qry_text != y.qry_text
        assert x.num_candidates == y.num_candidates == 10 and set(x.tgt_img_path) == set(y.tgt_img_path)
        assert x.tgt_img_path[0] != y.tgt_img_path[0]
        assert x.tgt_img_path[0] in y.tgt_img_path[1:] and y.tgt_img_path[0] in x.tgt_img_path[1:]
    reworded = gender_suite.eval("GenderSameGenderReworded").rows
    assert [r.tgt_img_path for r in reworded] == [r.tgt_img_path for r in gender_suite.eval("GenderSameGender").rows]


@pytest.mark.parametrize("split", ["eval", "dev"])
def test_positives_differ_from_distractors_in_the_asked_attribute_only(gender_suite: Suite, split: str) -> None:
    """Same emoji = same base, same tone, another (visibly different) gender; same gender = another emoji; no
    distractor is either; every candidate shows the query's skin tone."""
    renderer = EmojiRenderer(gender_suite.manifest["config"]["tile_size"])
    rows = _meta(gender_suite, "GenderSameGender", split)
    assert rows and rows == [[q, o, p, *d] for q, p, o, *d in _meta(gender_suite, "GenderSameEmoji", split)]
    for query, same_gender, same_emoji, *distractors in rows:
        assert query.gender in ("man", "woman", "person")
        assert same_emoji.base == query.base and same_emoji.gender != query.gender
        assert visible_difference(renderer, query.char, same_emoji.char) >= GENDER_MIN_DIFFERENCE
        assert same_gender.gender == query.gender and same_gender.base != query.base
        assert all(d.base != query.base and d.gender != query.gender for d in distractors)
        assert {it.tone for it in (same_gender, same_emoji, *distractors)} == {query.tone}


def test_train_rows_use_the_other_condition_positive_as_hard_negative(gender_suite: Suite) -> None:
    xs, ys = gender_suite.train("GenderSameEmoji").rows, gender_suite.train("GenderSameGender").rows
    assert xs and ys
    for x, y in zip(xs, ys, strict=False):
        if x.qry_image_path == y.qry_image_path:
            assert x.neg_image_path == y.pos_image_path and y.neg_image_path == x.pos_image_path


def test_no_base_emoji_crosses_train_dev_and_eval(gender_suite: Suite) -> None:
    def bases(split: str) -> set[str]:
        return {it.base for name in gender_suite.names(split=split) for row in _meta(gender_suite, name, split)
                for it in row}

    train, dev, evaluation = bases("train"), bases("dev"), bases("eval")
    assert train and dev and evaluation
    assert not train & dev and not train & evaluation and not dev & evaluation


def test_deterministic_per_seed_and_default_datasets_untouched(gender_suite: Suite, tmp_path: Path) -> None:
    again = build_suite(tmp_path / "again", seed=0, progress=False, datasets=GENDER_SETS, **TINY)
    assert _files(again.root) == _files(gender_suite.root)
    other = build_suite(tmp_path / "other", seed=1, progress=False, datasets=GENDER_SETS, **TINY)
    assert other.eval("GenderSameGender").rows != gender_suite.eval("GenderSameGender").rows
    # adding the stream leaves every default dataset's rows and provenance as they were
    small = {**TINY, "max_train_per_dataset": 3, "max_eval_per_dataset": 2,
             "datasets": ["ToneSameTone", "TextSameColour"]}
    both = build_suite(tmp_path / "both", seed=0, progress=False, **small)
    plain = build_suite(tmp_path / "plain", seed=0, progress=False, **{**small, "conflict_streams": ("tone", "text")})
    changed = {k for k, v in _files(plain.root).items() if _files(both.root).get(k) != v}
    assert changed == {"suite.json", "README.md"}  # only the config's stream list (and the pairs) differ


def test_bad_streams_are_reported(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="conflict_streams must be distinct names"):
        SuiteConfig(kind="conflict", conflict_streams=("tone", "hair"))
    with pytest.raises(ConfigError, match="conflict suite only"):
        SuiteConfig(conflict_streams=ALL_STREAMS)
    with pytest.raises(ConfigError, match=r"add stream\(s\) \['gender'\] to --conflict-streams"):
        SuiteConfig(kind="conflict", datasets=("GenderSameGender",))
    assert SuiteConfig(kind="conflict", conflict_streams=("gender", "tone")).conflict_streams == ("tone", "gender")


def test_build_suite_command_takes_conflict_streams(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tsembed.cli import main

    argv = ["data", "build-suite", "--out", str(tmp_path / "s"), "--kind", "conflict", "--conflict-streams",
            "tone,gender", "--dataset", "GenderSameGender", "--max-train", "2", "--max-eval", "2", "--pool-size",
            "5", "--dev-fraction", "0.15", "--no-progress"]
    assert main(argv) == 0
    assert "GenderSameGender" in capsys.readouterr().out
    manifest = json.loads((tmp_path / "s" / "suite.json").read_text())
    assert manifest["config"]["conflict_streams"] == ["tone", "gender"]
    assert list(manifest["pairs"]) == ["identity-vs-tone", "role-vs-gender"]
