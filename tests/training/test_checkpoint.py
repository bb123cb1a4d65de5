import os
import random

import numpy as np
import pytest
import torch

from tsembed.errors import ConfigError
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
