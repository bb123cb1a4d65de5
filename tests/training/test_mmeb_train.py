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
