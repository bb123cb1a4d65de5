"""Task hints from ``EmbedInput.task`` / ``encode(task=...)`` through the model to the routers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tsembed.errors import ConfigError
from tsembed.inference import encode, load_model
from tsembed.inference.prune import prune_experts
from tsembed.inputs import EmbedInput
from tsembed.model import TASK_HINT_KEY
from tsembed.moe.routing import get_routing_state

from .conftest import build_model

TASKS = ("classification", "retrieval")
TEXTS = ["a red apple", "two cats on a mat", "the tallest tower", "green leaves in rain"]


@pytest.fixture()
def hinted():
    return build_model(task_hints=TASKS)


def test_prepare_maps_tasks_and_rejects_unknown_ones(hinted):
    batch = hinted.prepare([EmbedInput("a", task="retrieval"), EmbedInput("b"), EmbedInput("c", task="classification")])
    assert batch[TASK_HINT_KEY].tolist() == [1, -1, 0]
    with pytest.raises(ConfigError, match=r"input 1 declares task 'vqa'; this model knows the tasks"):
        hinted.prepare([EmbedInput("a"), EmbedInput("b", task="vqa")])
    assert TASK_HINT_KEY not in build_model().prepare([EmbedInput("a", task="vqa")])  # no hints: task ignored


def test_task_changes_the_embedding_and_is_cleared_after_the_forward(hinted):
    plain = encode(hinted, TEXTS)
    as_retrieval = encode(hinted, TEXTS, task="retrieval")
    assert not np.allclose(plain, as_retrieval)
    assert get_routing_state(hinted.backbone).hints is None  # the next call does not inherit the hints
    np.testing.assert_allclose(encode(hinted, TEXTS), plain, atol=1e-6)
    # an input's own task wins over the call's; dict inputs may declare one
    mixed = encode(hinted, [EmbedInput(TEXTS[0], task="classification"), {"text": TEXTS[1], "task": "retrieval"}],
                   task="retrieval")
    np.testing.assert_allclose(mixed[0], encode(hinted, TEXTS[0], task="classification"), atol=1e-6)
    np.testing.assert_allclose(mixed[1], as_retrieval[1], atol=1e-6)


def test_hint_biases_train_with_the_router_and_survive_save_load_and_pruning(hinted, tmp_path):
    names = {n for n, p in hinted.named_parameters() if any(p is r for r in hinted.router_parameters())}
    assert any(n.endswith("router.hint") for n in names) and any(n.endswith("router.weight") for n in names)
    loaded = load_model(hinted.save_pretrained(tmp_path / "m"))
    np.testing.assert_allclose(encode(loaded, TEXTS, task="retrieval"), encode(hinted, TEXTS, task="retrieval"),
                               atol=1e-6)
    prune_experts(loaded, [2, 0])
    layer = next(m for m in loaded.modules() if getattr(m, "router_hint", None) is not None)
    original = next(m for m in hinted.modules() if getattr(m, "router_hint", None) is not None)
    torch.testing.assert_close(layer.router_hint, original.router_hint[:, [2, 0]])


def test_one_task_rule_for_the_cli_the_server_and_the_model():
    from tsembed.errors import TaskError
    from tsembed.model import check_task

    check_task(None, [])  # no task: always fine
    check_task("retrieval", ["classification", "retrieval"])
    with pytest.raises(TaskError, match="trained without task hints") as none:
        check_task("retrieval", [], "--task")
    with pytest.raises(TaskError, match=r"--task 'vqa'; this model knows the tasks") as unknown:
        check_task("vqa", ["retrieval"], "--task")
    assert (none.value.code, unknown.value.code) == ("task_not_supported", "unknown_task")
