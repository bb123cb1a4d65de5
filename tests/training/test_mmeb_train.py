"""Training reads MMEB-train as downloaded from the Hub (a folder per dataset, `original` / `diverse_instruction`)."""

import pytest

from tests.data.mmeb_hub import TRAIN_FIXTURE, write_mmeb_train
from tsembed.configtools import from_dict
from tsembed.errors import ConfigError, DataError
from tsembed.training.config import TrainConfig
from tsembed.training.data import TrainingData
from tsembed.training.trainer import Trainer, resolve_sources

from .helpers import toy_model


def config(tmp_path, **data) -> TrainConfig:
    return from_dict(TrainConfig, {
        "data": {"batch_size": 2, **data},
        "schedule": {"steps": 2, "stage1_steps": 1},
        "run": {"output_dir": str(tmp_path / "run"), "checkpoint_every": 2, "progress": False, "tensorboard": False},
        "model": {"backbone": {"kind": "toy"}},
    })


@pytest.fixture(scope="module")
def mmeb_train(tmp_path_factory):
    return write_mmeb_train(tmp_path_factory.mktemp("hub") / "MMEB-train")


def test_sources_come_from_the_layout_with_registry_tasks(mmeb_train, tmp_path):
    sources = resolve_sources(config(tmp_path, suite=str(mmeb_train)))
    assert [(s.name, s.task, s.image_root) for s in sources] == [
        ("ImageNet_1K", "classification", mmeb_train), ("MSCOCO_t2i", "retrieval", mmeb_train)]
    assert sources[0].path == mmeb_train / "ImageNet_1K" / "original-*.parquet"
    data = TrainingData(sources)
    assert len(data) == sum(TRAIN_FIXTURE.values())
    diverse = TrainingData(resolve_sources(config(tmp_path, suite=str(mmeb_train), train_split="diverse_instruction",
                                                  datasets=["MSCOCO_t2i"])))
    assert len(diverse) == TRAIN_FIXTURE["MSCOCO_t2i"] + 1 and diverse.rows[0][1].qry.startswith("Encode this")


def test_wrong_split_or_image_root_is_a_clear_error(mmeb_train, tmp_path):
    with pytest.raises(DataError, match=r"no dataset folder holds split 'train'.*"
                                        r"'ImageNet_1K': \['diverse_instruction', 'original'\]"):
        resolve_sources(config(tmp_path, suite=str(mmeb_train), train_split="train"))
    with pytest.raises(DataError, match=r"original-00000-of-00001.parquet row 1: `qry_image_path` "
                                        r"'images/ImageNet_1K/red_0.png' not found under image root"):
        TrainingData(resolve_sources(config(tmp_path, suite=str(mmeb_train), image_root=str(tmp_path))))
    with pytest.raises(ConfigError, match="data.train_split"):
        config(tmp_path, suite=str(mmeb_train), train_split="")


def test_fit_on_mmeb_train_layout(mmeb_train, tmp_path):
    trainer = Trainer(config(tmp_path, suite=str(mmeb_train)), model=toy_model())
    trainer.fit()
    assert trainer.step == 2 and (tmp_path / "run" / "metrics.jsonl").is_file()


def test_visdial_rows_with_an_empty_negative_text_validate_and_train(tmp_path, caplog):
    """MMEB-train's VisDial: `neg_text: ""` beside `neg_image_path`. VLM2Vec reads the negative as its image; so do
    we, with the placeholder added (and said in the log), instead of refusing the file."""
    from tests.data.mmeb_hub import write_visdial_train
    from tsembed.cli import main
    from tsembed.data import read_train
    from tsembed.inputs import IMAGE_PLACEHOLDER

    root = write_visdial_train(tmp_path / "MMEB-train")
    assert main(["data", "validate", str(root / "VisDial"), "--image-root", str(root)]) == 0
    with caplog.at_level("INFO", logger="tsembed.data.problems"):
        split = read_train(root / "VisDial", root)
    assert len(split) == 4 and split.report.num_skipped == 0 and list(split.report.notes.values()) == [4]
    assert "4 of 4 rows with an image without a <|image_1|> placeholder" in caplog.text
    assert all(row.neg_text == IMAGE_PLACEHOLDER and row.negative_input(root).image for row in split)
    data = TrainingData(resolve_sources(config(tmp_path, suite=str(root))))
    assert len(data) == 4 and all(i >= 0 for i in data.negative_ids)
    trainer = Trainer(config(tmp_path, suite=str(root), hard_negatives=True), model=toy_model(), data=data)
    trainer.fit()
    assert trainer.step == 2


def test_train_error_names_only_flags_train_has(tmp_path):
    from tests.data.mmeb_hub import write_parquet

    rows = [{"qry": "", "qry_image_path": "", "pos_text": "red", "pos_image_path": "", "neg_text": "",
             "neg_image_path": ""}]
    write_parquet(tmp_path / "hub" / "Bad" / "original-00000-of-00001.parquet", rows)
    with pytest.raises(DataError) as err:
        TrainingData(resolve_sources(config(tmp_path, suite=str(tmp_path / "hub"))))
    assert "--set data.skip_invalid=true" in str(err.value) and "--skip-invalid" not in str(err.value)
    from tsembed.training.config import default_config_path, load_train_config

    assert load_train_config(default_config_path(), ["data.skip_invalid=true"]).data.skip_invalid  # the flag works
