"""Issue 24, D14: resuming past a damaged latest checkpoint, and settings changed on resume."""

import logging

import pytest

from tsembed.errors import AdapterError
from tsembed.training.trainer import Trainer

from .helpers import toy_model
from .test_trainer import make_config, write_train_files


@pytest.fixture(scope="module")
def train_files(tmp_path_factory):
    return write_train_files(tmp_path_factory.mktemp("train"))


def test_d14_a_damaged_latest_checkpoint_is_skipped_and_a_changed_lr_is_flagged(train_files, tmp_path, caplog):
    """Issue 24, D14: a damaged latest checkpoint stopped `--resume auto` although the one before it was whole; now
    that one is resumed from, with a warning. A changed optim.lr on resume is flagged, naming both values."""
    Trainer(make_config(train_files, tmp_path, schedule={"steps": 8}), model=toy_model()).fit()
    run = tmp_path / "run"
    latest = run / "checkpoint-0000006" / "trainer_state.pt"
    assert latest.is_file() and (run / "checkpoint-0000003" / "trainer_state.pt").is_file()
    latest.write_bytes(latest.read_bytes()[:100])  # truncated, as by a crash or a full disk

    caplog.set_level(logging.WARNING)
    resumed = Trainer(make_config(train_files, tmp_path, schedule={"steps": 9}, optim={"lr": 1e-2}),
                      model=toy_model())
    resumed.fit(resume="auto")
    assert resumed.step == 9
    messages = [r.getMessage() for r in caplog.records]
    assert any("checkpoint-0000006 cannot be resumed from (AdapterError" in m and "checkpoint-0000003" in m
               for m in messages), messages
    assert any("optim.lr changed on resume: 0.005 in the checkpointed run, 0.01 now" in m for m in messages), messages
    assert not any("schedule.steps" in m for m in messages)  # extending a run is not flagged

    # a checkpoint named explicitly is not replaced by another, and when every one is damaged, resume fails
    for state in run.glob("checkpoint-*/trainer_state.pt"):
        state.write_bytes(state.read_bytes()[:100])
    with pytest.raises(AdapterError, match="trainer_state.pt"):
        Trainer(make_config(train_files, tmp_path, schedule={"steps": 12}), model=toy_model()).fit(resume="auto")
