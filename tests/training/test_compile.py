"""``run.compile`` (issue 23 §7): torch.compile of the backbone's forward, off by default, validated, and the
same losses as eager. The fast test compiles with dynamo's ``eager`` backend (tracing, guards, graph breaks,
no code generation); inductor and the real backbones take minutes on a CPU and are marked slow."""

import copy
import json

import pytest
import torch

from tsembed.errors import ConfigError
from tsembed.inputs import EmbedInput
from tsembed.training.config import RunSection
from tsembed.training.eans import EANSConfig
from tsembed.training.objective import ContrastiveObjective, LossConfig
from tsembed.training.step import ContrastiveBatch, contrastive_step
from tsembed.training.trainer import Trainer

from .helpers import toy_model
from .test_trainer import make_config, write_train_files


@pytest.fixture(scope="module")
def train_files(tmp_path_factory):
    return write_train_files(tmp_path_factory.mktemp("train"))


def test_compile_is_off_by_default_and_validated():
    assert RunSection().compile is False
    RunSection(compile=True, compile_backend="aot_eager")
    RunSection(compile=True, compile_mode="max-autotune")
    for bad, match in (({"compile": "yes"}, "run.compile must be true or false"),
                       ({"compile_backend": "eager"}, "apply with run.compile: true only"),
                       ({"compile_mode": "default"}, "apply with run.compile: true only"),
                       ({"compile": True, "compile_backend": "nope"}, "run.compile_backend must be one of"),
                       ({"compile": True, "compile_mode": "fastest"}, "run.compile_mode must be null or one of"),
                       ({"compile": True, "compile_backend": "eager", "compile_mode": "default"},
                        "compile_mode is an inductor option")):
        with pytest.raises(ConfigError, match=match):
            RunSection(**bad)


def losses(run_dir) -> list[float]:
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def compiled_run_matches_eager(train_files, tmp_path, backend: str) -> None:
    sections = {"run": {"chunk_size": 8}, "schedule": {"steps": 2, "stage1_steps": 1}}  # GradCache: 3 chunks
    eager = Trainer(make_config(train_files, tmp_path / "eager", **sections), model=toy_model())
    eager.fit()
    sections["run"].update(compile=True, compile_backend=backend)
    compiled = Trainer(make_config(train_files, tmp_path / "compiled", **sections), model=toy_model())
    assert compiled.model.backbone._compiled_call_impl is not None  # compiled in place ...
    assert compiled.model.state_dict().keys() == eager.model.state_dict().keys()  # ... so names are unchanged
    compiled.fit()
    assert losses(tmp_path / "compiled" / "run") == pytest.approx(losses(tmp_path / "eager" / "run"), rel=1e-5)


def test_a_compiled_run_trains_like_an_eager_one(train_files, tmp_path):
    compiled_run_matches_eager(train_files, tmp_path, "eager")


@pytest.mark.slow
def test_a_run_compiled_by_inductor_trains_like_an_eager_one(train_files, tmp_path):
    compiled_run_matches_eager(train_files, tmp_path, "inductor")


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["minilm-effnet", "qwen2-vl"])
def test_compiled_image_backbones_give_the_eager_gradcache_step(kind, request, backbone_test_images):
    """The vision feature store and caches stay out of the graph (torch.compiler.disable); loss and gradients of
    a GradCache step with images equal eager ones."""
    from tsembed.backbones import testing as tiny
    from tsembed.backbones.qwen2_vl import Qwen2VLBackbone
    from tsembed.model import ModelConfig, TSEmbedModel
    from tsembed.moe import MoELoRAConfig

    torch.manual_seed(0)
    if kind == "minilm-effnet":
        backbone = tiny.build_tiny_minilm_effnet(request.getfixturevalue("tiny_bert_dir"))
    else:
        backbone = Qwen2VLBackbone(str(request.getfixturevalue("tiny_qwen2_vl_dir")))
    moe = MoELoRAConfig(target_modules=backbone.default_target_modules, num_experts=2, rank=2)
    eager = TSEmbedModel(backbone, ModelConfig(backbone=backbone.config(), moe=moe)).train()
    compiled = copy.deepcopy(eager)
    compiled.backbone.compile(backend="eager")
    objective = ContrastiveObjective(LossConfig(tau=0.1, load_balance_weight=0.1), EANSConfig(mode="off"))
    queries = [EmbedInput(f"what <|image_1|> {w}", backbone_test_images[i]) for i, w in enumerate("a bb ccc d".split())]
    targets = [EmbedInput(w) for w in ("smile", "heart red", "star", "tree green big")]
    batch = ContrastiveBatch(queries, targets, torch.arange(4), torch.arange(4), torch.full((4,), -1))
    for _ in range(2):  # the second step runs the compiled graphs (and a second shape)
        eager.zero_grad()
        compiled.zero_grad()
        a = contrastive_step(eager, objective, batch, eans_active=False, chunk_size=2)
        b = contrastive_step(compiled, objective, batch, eans_active=False, chunk_size=2)
        assert b.loss == pytest.approx(a.loss, rel=1e-6) and b.load_balance == pytest.approx(a.load_balance, rel=1e-6)
    for (name, p), q in zip(eager.named_parameters(), compiled.parameters(), strict=True):
        if p.grad is not None:
            torch.testing.assert_close(q.grad, p.grad, rtol=1e-5, atol=1e-7, msg=name)
