"""Fixtures for inference tests: an image-aware toy backbone, registered so models save and load."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageStat

from tests.toy_backbone import ToyBackbone
from tsembed.backbones import BACKBONES
from tsembed.backbones.images import load_image
from tsembed.inputs import IMAGE_PLACEHOLDER, EmbedInput
from tsembed.model import ModelConfig, TSEmbedModel
from tsembed.moe import MoELoRAConfig, MoELoRALinear


class ImageToyBackbone(ToyBackbone):
    """The toy backbone plus images: an image becomes three colour words in front of the text."""

    kind = "toy-image"
    image_token = "imgtok"

    def prepare(self, inputs):  # type: ignore[override]
        converted = []
        for x in inputs:
            text = (x.text or "").replace(IMAGE_PLACEHOLDER, " ")
            if x.image is not None:
                r, g, b = (int(c) // 32 for c in ImageStat.Stat(load_image(x.image).resize((8, 8))).mean)
                text = f"imgr{r} imgg{g} imgb{b} {text}"
            converted.append(EmbedInput(text=text.strip() or None))
        return super().prepare(converted)

    def config(self) -> dict:
        return {"kind": self.kind, "hidden": self.hidden_size}


def build_model(level: str = "sequence", top_k: int = 1, shared: int = 1, seed: int = 0,
                task_hints: tuple[str, ...] = (), nulls: int = 0) -> TSEmbedModel:
    backbone = ImageToyBackbone(seed=seed)
    moe = MoELoRAConfig(target_modules=backbone.default_target_modules, num_experts=4, rank=2, level=level,
                        routing="topk", top_k=top_k, num_shared_experts=shared, router_init_std=0.5,
                        task_hints=list(task_hints), num_null_experts=nulls)
    config = ModelConfig(backbone=backbone.config(), moe=moe, query_instruction="query:",
                         document_instruction="passage:")
    model = TSEmbedModel(backbone, config)
    torch.manual_seed(seed + 1)
    for layer in model.modules():
        if isinstance(layer, MoELoRALinear):
            torch.nn.init.normal_(layer.lora_B, std=0.1)
            if layer.router_hint is not None:
                torch.nn.init.normal_(layer.router_hint, std=3.0)
    return model.eval()


@pytest.fixture(scope="package", autouse=True)
def _one_torch_thread():
    """Tiny models run fastest on one thread; on a busy 2-core machine extra threads only spin."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session", autouse=True)
def _register_toy_backbone():
    BACKBONES[ImageToyBackbone.kind] = ImageToyBackbone
    yield
    BACKBONES.pop(ImageToyBackbone.kind, None)


@pytest.fixture(scope="session")
def _base_model() -> TSEmbedModel:
    return build_model()


@pytest.fixture
def model(_base_model) -> TSEmbedModel:
    return copy.deepcopy(_base_model)


@pytest.fixture(scope="session")
def model_dir(_base_model, tmp_path_factory) -> Path:
    return _base_model.save_pretrained(tmp_path_factory.mktemp("model") / "toy")


def make_image(path: Path, colour: tuple[int, int, int], size: tuple[int, int] = (16, 16)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path
