import json
from pathlib import Path

import pytest

from tsembed.data import META_TASKS, load_suite
from tsembed.data.registry import SUITE_DATASETS
from tsembed.data.suite import Suite, build_suite
from tsembed.errors import ConfigError, DataError

from .conftest import TINY


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _meta_bases(suite: Suite, name: str, split: str) -> set[str]:
    lines = (suite.root / suite.manifest["datasets"][name]["provenance"][split]).read_text().splitlines()
    return {base for line in lines for base in json.loads(line)["bases"]}


def test_same_seed_is_byte_identical_and_another_seed_differs(tiny_suite: Suite, tmp_path: Path) -> None:
    again = build_suite(tmp_path / "again", seed=0, progress=False, **TINY)
    assert _files(again.root) == _files(tiny_suite.root)
    other = build_suite(tmp_path / "other", seed=1, progress=False, **TINY)
    assert _files(other.root) != _files(tiny_suite.root)
    assert other.train("EmojiGroup").rows != tiny_suite.train("EmojiGroup").rows


def test_suite_covers_all_meta_tasks_ind_and_ood(tiny_suite: Suite) -> None:
    infos = tiny_suite.datasets.values()
    assert len(infos) == len(SUITE_DATASETS) >= 12
    assert {d.meta_task for d in infos} == set(META_TASKS)
    for task in META_TASKS:  # every meta-task has an in-distribution dataset to train on
        assert tiny_suite.names(meta_task=task, ood=False)


def test_every_dataset_loads_and_validates_through_the_data_layer(tiny_suite: Suite) -> None:
    for name, info in tiny_suite.datasets.items():
        counts = tiny_suite.manifest["datasets"][name]["counts"]
        if not info.ood:
            train = tiny_suite.train(name)
            assert train.report.ok and len(train) == counts["train"] == TINY["max_train_per_dataset"]
        ev = tiny_suite.eval(name)
        assert ev.report.ok and len(ev) == counts["eval"] == TINY["max_eval_per_dataset"], name
        for row in ev.rows:
            assert row.qry_text.startswith(info.query_template.split("{text}")[0])
            pairs = list(zip(row.tgt_text, row.tgt_img_path, strict=True))
            assert len(set(pairs)) == len(pairs), f"{name}: duplicate candidates"
            assert 2 <= row.num_candidates <= max(TINY["pool_size"], 99)


def test_ood_datasets_have_no_train_split(tiny_suite: Suite) -> None:
    ood = tiny_suite.names(ood=True)
    assert ood and all(tiny_suite.datasets[n].splits == ("eval",) for n in ood)
    assert not (tiny_suite.root / "train" / f"{ood[0]}.jsonl").exists()
    with pytest.raises(ConfigError, match="no 'train' split .*out-of-distribution"):
        tiny_suite.train(ood[0])
    assert set(tiny_suite.names(split="train")) == set(tiny_suite.names(ood=False))


def test_no_base_emoji_or_image_crosses_train_and_eval(tiny_suite: Suite) -> None:
    train_bases = set().union(*(_meta_bases(tiny_suite, n, "train") for n in tiny_suite.names(split="train")))
    eval_bases = set().union(*(_meta_bases(tiny_suite, n, "eval") for n in tiny_suite.names()))
    assert train_bases and eval_bases and not train_bases & eval_bases
    splits = json.loads((tiny_suite.root / "meta/splits.json").read_text())
    assert train_bases <= set(splits["train_bases"]) and eval_bases <= set(splits["eval_bases"])
    train_imgs = {
        p
        for n in tiny_suite.names(split="train")
        for r in tiny_suite.train(n)
        for p in (r.qry_image_path, r.pos_image_path, r.neg_image_path)
        if p
    }
    eval_imgs = {
        p for n in tiny_suite.names() for r in tiny_suite.eval(n) for p in (r.qry_img_path, *r.tgt_img_path) if p
    }
    assert not train_imgs & eval_imgs


def test_images_are_small_pngs_deduplicated_by_content(tiny_suite: Suite) -> None:
    from PIL import Image

    images = sorted((tiny_suite.root / "images").iterdir())
    assert len(images) == tiny_suite.manifest["images"]["count"]
    for path in images[:20]:
        with Image.open(path) as im:
            assert im.format == "PNG" and max(im.size) <= 128
    assert len({p.read_bytes() for p in images}) == len(images)


def test_manifest_and_card_describe_the_suite(tiny_suite: Suite) -> None:
    m = tiny_suite.manifest
    assert (m["seed"], m["format"], m["licence"]) == (0, "tsembed-suite", "CC-BY-SA-4.0")
    assert m["config"]["max_eval_per_dataset"] == TINY["max_eval_per_dataset"] and m["generator_version"]
    assert m["datasets"]["EmojiGroup"]["files"] == {"train": "train/EmojiGroup.jsonl", "eval": "eval/EmojiGroup.jsonl"}
    card = (tiny_suite.root / "README.md").read_text()
    assert "CC BY-SA 4.0" in card and "OpenMoji" in card
    assert all(f"| {name} |" in card for name in tiny_suite.datasets)


def test_hard_negatives_and_meta_tasks_look_right(tiny_suite: Suite) -> None:
    row = tiny_suite.train("SkinToneEdit").rows[0]
    assert row.has_negative and row.neg_image_path != row.pos_image_path
    assert "the same with" in row.qry and row.qry.count("<|image_1|>") == 1
    grounding = tiny_suite.eval("EmojiGrounding").rows[0]
    assert grounding.tgt_text[0].startswith("<|image_1|>\nRepresent the given cropped image")
    assert tiny_suite.eval("EmojiGroup").rows[0].num_candidates == 9  # the full label set


def test_parquet_suite_subset_loads(tmp_path: Path) -> None:
    suite = build_suite(
        tmp_path / "pq", format="parquet", datasets=["EmojiGroup", "GenderEdit"], progress=False, **TINY
    )
    assert suite.names() == ["EmojiGroup", "GenderEdit"]
    assert suite.datasets["EmojiGroup"].files["train"].endswith(".parquet")
    assert len(suite.train("EmojiGroup")) == TINY["max_train_per_dataset"] and suite.eval("GenderEdit").report.ok


def test_existing_directories_are_not_clobbered(tiny_suite: Suite, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="already exists; pass overwrite=True"):
        build_suite(tiny_suite.root, progress=False, **TINY)
    stranger = tmp_path / "mine"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="not a tsembed suite"):
        build_suite(stranger, overwrite=True, progress=False, **TINY)
    rebuilt = build_suite(tmp_path / "s", datasets=["BackgroundVQA"], progress=False, **TINY)
    rebuilt = build_suite(rebuilt.root, datasets=["SkinTone"], overwrite=True, progress=False, **TINY)
    assert rebuilt.names() == ["SkinTone"] and not (rebuilt.root / "train/BackgroundVQA.jsonl").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_bad_knobs_and_missing_suites_are_reported(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown suite dataset"):
        build_suite(tmp_path / "x", datasets=["Nope"], progress=False)
    with pytest.raises(ConfigError, match="eval_fraction must be in"):
        build_suite(tmp_path / "x", eval_fraction=1.5, progress=False)
    with pytest.raises(DataError, match="not a tsembed suite"):
        load_suite(tmp_path)


def test_dev_split_is_held_out_from_train_and_leaves_eval_unchanged(tiny_suite: Suite, tmp_path: Path) -> None:
    from tsembed.evaluation import resolve_eval_sets

    dev = build_suite(tmp_path / "dev", seed=0, dev_fraction=0.15, progress=False, **TINY)
    ind, ood = dev.names(ood=False), dev.names(ood=True)
    assert set(dev.names(split="dev")) == set(ind)
    assert all(dev.datasets[n].splits == ("eval",) for n in ood)
    for name in dev.names():  # adding dev takes bases from train only: eval is byte for byte the same
        rel = dev.manifest["datasets"][name]["files"]["eval"]
        assert (dev.root / rel).read_bytes() == (tiny_suite.root / rel).read_bytes()
    dev_bases = set().union(*(_meta_bases(dev, n, "dev") for n in ind))
    train_bases = set().union(*(_meta_bases(dev, n, "train") for n in ind))
    eval_bases = set().union(*(_meta_bases(dev, n, "eval") for n in dev.names()))
    assert dev_bases and not dev_bases & train_bases and not dev_bases & eval_bases
    assert dev_bases <= set(json.loads((dev.root / "meta/splits.json").read_text())["dev_bases"])
    rows = dev.eval(ind[0], split="dev").rows
    assert rows and all(r.num_candidates >= 2 for r in rows)
    assert "dev bases" in (dev.root / "README.md").read_text()
    assert [s.name for s in resolve_eval_sets(dev.root, split="dev")] == ind
    with pytest.raises(ConfigError, match="no 'dev' split; build one with"):
        resolve_eval_sets(tiny_suite.root, split="dev")
    with pytest.raises(ConfigError, match="split must be one of"):
        resolve_eval_sets(dev.root, split="train")
    with pytest.raises(ConfigError, match="dev_fraction must be in"):
        build_suite(tmp_path / "x", dev_fraction=0.8, progress=False)
