"""CLIP and SigLIP dual encoders on tiny random checkpoints, reloaded offline, late fusion."""

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tsembed.backbones import DualEncoderBackbone, build_backbone, fuse_embeddings, pool
from tsembed.errors import ConfigError
from tsembed.inputs import EmbedInput
from tsembed.moe import MoELoRAConfig, attach, collect_routing


@pytest.fixture(params=["clip", "siglip"])
def dual_dir(request: pytest.FixtureRequest) -> Path:
    return request.getfixturevalue(f"tiny_{request.param}_dir")


def embed(backbone: DualEncoderBackbone, inputs: list[EmbedInput]) -> torch.Tensor:
    with torch.no_grad():
        out = backbone(**backbone.prepare(inputs))
    assert out.hidden_states.shape[1] == 1 and out.attention_mask.tolist() == [[1]] * len(inputs)
    return pool(out.hidden_states, out.attention_mask, backbone.default_pooling)


def test_fusion_rule_is_mean_of_normalised_modalities(dual_dir, backbone_test_images) -> None:
    b = DualEncoderBackbone(str(dual_dir))
    img = backbone_test_images[1]
    text_only, image_only = embed(b, [EmbedInput("a red apple")]), embed(b, [EmbedInput(image=img)])
    mixed = embed(b, [EmbedInput("a red apple <|image_1|>", img)])  # the placeholder is dropped from the text
    torch.testing.assert_close(text_only.norm(dim=-1), torch.ones(1))
    torch.testing.assert_close(image_only.norm(dim=-1), torch.ones(1))
    torch.testing.assert_close(mixed, (text_only + image_only) / 2, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(embed(b, [EmbedInput("<|image_1|> a red apple", img)]), mixed)


def test_mixed_batch_matches_single_inputs(dual_dir, backbone_test_images) -> None:
    b = DualEncoderBackbone(str(dual_dir))
    inputs = [
        EmbedInput("a dog"),
        EmbedInput(image=backbone_test_images[2]),
        EmbedInput("a car", backbone_test_images[3]),
    ]
    batch = embed(b, inputs)
    for i, item in enumerate(inputs):
        torch.testing.assert_close(batch[i], embed(b, [item])[0], atol=1e-5, rtol=1e-4)


def test_moe_lora_in_both_towers_keeps_signature_length(dual_dir, backbone_test_images) -> None:
    b = DualEncoderBackbone(str(dual_dir))
    summary = attach(b, MoELoRAConfig(target_modules=b.default_target_modules, num_experts=4, rank=2))
    assert summary.num_modules == 2 * 2 * 6  # 2 towers × 2 layers × (q, k, v, out, fc1, fc2)
    signatures = []
    for inputs in ([EmbedInput("text only")], [EmbedInput(image=backbone_test_images[0])]):
        out = b(**b.prepare(inputs))
        signatures.append(collect_routing(b).signature)
        out.hidden_states.sum().backward()
    assert signatures[0].shape == signatures[1].shape == (1, 24 * 4)
    probs = collect_routing(b).layer_probs  # last forward: image only
    text_layers = [v for k, v in probs.items() if k.startswith("model.text_model")]
    assert all(torch.count_nonzero(p) == 0 for p in text_layers)  # absent modality routes nothing


def test_config_roundtrip(tiny_siglip_dir) -> None:
    b = DualEncoderBackbone(str(tiny_siglip_dir))
    assert b.config() == {"kind": "dual-encoder", "path": str(tiny_siglip_dir), "max_length": None, "dtype": "float32"}
    rebuilt = build_backbone(json.loads(json.dumps(b.config())))
    inputs = [EmbedInput("hello world")]
    assert torch.equal(embed(rebuilt, inputs), embed(b, inputs))
    assert b.prepare(inputs)["input_ids"].shape == (1, 16)  # SigLIP pads to its trained length


def test_bad_configs(tiny_clip_dir, tiny_qwen2_vl_dir) -> None:
    with pytest.raises(ConfigError, match="holds a 'qwen2_vl' model; dual-encoder supports"):
        DualEncoderBackbone(str(tiny_qwen2_vl_dir))
    with pytest.raises(ConfigError, match="max_length must be between 2 and"):
        DualEncoderBackbone(str(tiny_clip_dir), max_length=1000)


def test_fuse_embeddings_by_hand() -> None:
    text = torch.tensor([[3.0, 4.0], [1.0, 0.0], [0.0, 2.0]])
    image = torch.tensor([[0.0, 5.0], [0.0, 1.0], [2.0, 0.0]])
    fused = fuse_embeddings(text, image, torch.tensor([True, True, False]), torch.tensor([True, False, True]))
    expected = torch.tensor([[0.3, 0.9], [1.0, 0.0], [1.0, 0.0]])
    torch.testing.assert_close(fused, expected)
    assert torch.allclose(F.normalize(fused, dim=-1)[0], F.normalize(torch.tensor([0.3, 0.9]), dim=0))
