import os
import random

import numpy as np
import pytest
import torch

from tsembed.errors import AdapterError, ConfigError
from tsembed.training import checkpoint as ckpt


class _Exploit:
    """Pickles to a call of os.system: what a crafted trainer_state.pt would run under weights_only=False."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_crafted_trainer_state_is_refused_without_running_code(tmp_path):
    path = tmp_path / "checkpoint-0000003"
    path.mkdir()
    marker = tmp_path / "pwned"
    torch.save({"step": 3, "payload": _Exploit(marker)}, path / ckpt.STATE_NAME)
    with pytest.raises(ConfigError, match="trainer_state.pt: refused"):
        ckpt.load_state(ckpt.resolve_resume(str(path), tmp_path))
    assert not marker.exists()


def test_rng_state_round_trips_through_a_weights_only_load(tmp_path):
    path = tmp_path / "checkpoint-0000001"
    path.mkdir()
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    np.random.normal()  # a cached gaussian is part of numpy's state
    torch.save({"rng": ckpt.rng_state()}, path / ckpt.STATE_NAME)
    expected = (random.random(), np.random.normal(), torch.rand(2))
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    ckpt.set_rng_state(ckpt.load_state(path)["rng"])
    got = (random.random(), np.random.normal(), torch.rand(2))
    assert got[:2] == expected[:2] and torch.equal(got[2], expected[2])


class _Model:
    """Stands in for TSEmbedModel.save_pretrained: one weight file with its checksum listing."""

    def save_pretrained(self, directory):
        from tsembed.weights import write_checksums

        directory.mkdir(parents=True)
        torch.save({"w": torch.ones(2)}, directory / "trainable.safetensors")
        write_checksums(directory, ["trainable.safetensors"])


@pytest.mark.parametrize("damage", [lambda b: b[: len(b) // 2], lambda b: b[:-8] + b"\x00" * 8])
def test_resume_verifies_the_trainer_state_checksum(tmp_path, damage):
    path = ckpt.save_checkpoint(tmp_path, _Model(), {"step": 2, "optimizer": {"lr": torch.tensor(0.1)}}, keep=2)
    assert ckpt.load_state(path)["step"] == 2
    state = path / ckpt.STATE_NAME
    state.write_bytes(damage(state.read_bytes()))
    with pytest.raises(AdapterError, match=r"trainer_state\.pt: sha256 .* differs"):
        ckpt.load_state(ckpt.resolve_resume("auto", tmp_path))
