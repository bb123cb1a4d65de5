"""Linear probes of the visual bridge: does what the conditions need survive each stage of the image path?

Why: the conflict study measured its colour-side failures above a *random* projector; before experts in the
language layers are compared, the bridge they sit on must carry colour, skin tone, group and identity. Each
representation is probed with a logistic regression trained on the suite's train-split emoji and scored on its
dev-split emoji (held-out bases, so a probe cannot memorise an emoji), and identity is read by nearest
neighbour across tints. The gender stream's attribute is probed the same way: gender (man / woman / person, the
conflict suite's visibly different gender looks), and the same person emoji found by nearest neighbour across
genders within one skin tone (``gender_identity``):

* R0: raw EfficientNet-Lite0 grid features (mean over cells; the ceiling of what the image path can keep);
* R1: the projector at its seeded random init (mean of its tokens): what the earlier studies trained on;
* R2: the aligned projector's tokens;
* R3: frozen MiniLM's mean-pooled output over the aligned tokens (what the adapters see);
* R1_minilm: frozen MiniLM over the random projector's tokens (R3's counterpart before alignment).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tsembed.extras import require

#: Fitzpatrick tones of the tone probe (5-way, chance 0.2).
PROBE_TONES = ("light", "medium-light", "medium", "medium-dark", "dark")
#: Everything `run_probes` can measure; `tasks` picks some.
PROBE_TASKS = ("tint", "tone", "group", "identity", "gender", "gender_identity")


def _images(ctx: Any, split: str, limit: int, rng: random.Random) -> dict[str, tuple[list, list]]:
    """Per probe task, pictures and labels of one split (at most ``limit`` emoji per task)."""
    from tsembed.data.suite.tasks.conflict import TINTS, tint_image, tint_population

    def sample(items: list) -> list:
        return rng.sample(items, min(limit, len(items)))

    tint_items = sample(tint_population(ctx, split))
    tints = list(TINTS)
    tint = ([tint_image(ctx.renderer, it, t) for it in tint_items for t in tints],
            [t for _ in tint_items for t in tints])
    toned = sample([it for it in ctx.items(split) if it.tone in PROBE_TONES])
    tone = ([ctx.renderer.single(it.char) for it in toned], [it.tone for it in toned])
    grouped = sample(list(ctx.items(split)))
    group = ([ctx.renderer.single(it.char) for it in grouped], [it.group for it in grouped])
    return {"tint": tint, "tone": tone, "group": group}


def _identity_images(ctx: Any, limit: int, rng: random.Random) -> tuple[list, int, int]:
    """Dev emoji of the tint population, each in every tint (emoji-major); returns images, emoji, tints."""
    from tsembed.data.suite.tasks.conflict import TINTS, tint_image, tint_population

    items = tint_population(ctx, "dev")
    items = rng.sample(items, min(limit, len(items)))
    return [tint_image(ctx.renderer, it, t) for it in items for t in TINTS], len(items), len(TINTS)


def _gender_looks(ctx: Any, split: str, limit: int, rng: random.Random) -> list:
    """Up to ``limit`` gender looks of a split (the conflict suite's gender stream: visibly different genders)."""
    from tsembed.data.suite.tasks.conflict import gender_variants

    looks = [look for looks in gender_variants(ctx, split).values() for look in looks]
    return rng.sample(looks, min(limit, len(looks)))


def gender_identity_accuracy(vectors: np.ndarray, identities: list[str], genders: list[str],
                             strata: list[str]) -> float:
    """Nearest neighbour across genders: for each look and each other gender its emoji is drawn in, is the nearest
    picture among all looks of that gender and the same skin tone the same emoji? (cosine)."""
    x = vectors / np.maximum(np.linalg.norm(vectors, axis=-1, keepdims=True), 1e-12)
    index = {(identities[i], genders[i]): i for i in range(len(identities))}
    hits, total = 0, 0
    for i in range(len(identities)):
        for gender in sorted({g for (ident, g) in index if ident == identities[i]} - {genders[i]}):
            pool = [j for j in range(len(identities)) if genders[j] == gender and strata[j] == strata[i]]
            nearest = pool[int(np.argmax(x[pool] @ x[i]))]
            hits += int(nearest == index[(identities[i], gender)])
            total += 1
    return hits / max(total, 1)


def identity_accuracy(vectors: np.ndarray, num_items: int, num_tints: int) -> float:
    """Nearest-neighbour identity across tints: for every emoji in tint a and every other tint b, is the
    nearest picture among all emoji in tint b the same emoji? (cosine; chance 1 / num_items)."""
    x = vectors / np.maximum(np.linalg.norm(vectors, axis=-1, keepdims=True), 1e-12)
    x = x.reshape(num_items, num_tints, -1)
    hits, total = 0, 0
    for a in range(num_tints):
        for b in range(num_tints):
            if a == b:
                continue
            nearest = (x[:, a] @ x[:, b].T).argmax(axis=-1)  # [items]
            hits += int((nearest == np.arange(num_items)).sum())
            total += num_items
    return hits / total


def probe_accuracy(train_x: np.ndarray, train_y: list, test_x: np.ndarray, test_y: list, seed: int = 0) -> float:
    """Logistic-regression accuracy on held-out emoji (features standardised on the train side)."""
    linear = require("sklearn.linear_model", "the bridge probes (scikit-learn)")
    preprocessing = require("sklearn.preprocessing", "the bridge probes (scikit-learn)")
    scaler = preprocessing.StandardScaler().fit(train_x)
    model = linear.LogisticRegression(max_iter=3000, C=1.0, random_state=seed)
    model.fit(scaler.transform(train_x), train_y)
    return float((model.predict(scaler.transform(test_x)) == np.asarray(test_y)).mean())


def representations(backbone: Any, random_state: dict[str, torch.Tensor] | None) -> dict[str, Callable]:
    """Name → function from vision features [N, T, C] to vectors [N, d] for each probed stage."""
    from tsembed.training.align import image_only_batch

    aligned_state = {k: v.clone() for k, v in backbone.projector.state_dict().items()}

    def tokens(state: dict[str, torch.Tensor]) -> Callable:
        def run(features: torch.Tensor) -> torch.Tensor:
            backbone.projector.load_state_dict(state)
            return backbone.projector(features).mean(dim=1)
        return run

    def minilm(state: dict[str, torch.Tensor]) -> Callable:
        from tsembed.backbones.pooling import pool

        def run(features: torch.Tensor) -> torch.Tensor:
            backbone.projector.load_state_dict(state)
            out = backbone(**image_only_batch(backbone, features))
            return pool(out.hidden_states, out.attention_mask, "mean")
        return run

    stages: dict[str, Callable] = {"R0": lambda features: features.mean(dim=1)}
    if random_state is not None:
        stages["R1"] = tokens(random_state)
        stages["R1_minilm"] = minilm(random_state)
    stages["R2"] = tokens(aligned_state)
    stages["R3"] = minilm(aligned_state)
    return stages


@torch.no_grad()
def run_probes(suite: str | Path, bridge: str | Path | None, per_task: int = 400, seed: int = 0,
               backbone_options: dict[str, Any] | None = None, progress: bool = True,
               tasks: tuple[str, ...] = PROBE_TASKS) -> dict[str, dict[str, float]]:
    """Probe accuracies {stage: {task: accuracy}} for ``suite`` with the bridge file ``bridge`` (None: the random
    projector stands in for the aligned one, so R2/R3 equal R1/R1_minilm), for ``tasks`` (of PROBE_TASKS).

    Every task draws its sample as it always did whichever tasks run (the gender tasks from a stream of their
    own), so adding or leaving out a task changes no other task's number."""
    from tsembed.data.suite.tasks.conflict import _gender_identity, gender_variants

    unknown = sorted(set(tasks) - set(PROBE_TASKS))
    if unknown or not tasks:
        raise ValueError(f"probe tasks must be among {list(PROBE_TASKS)}, got {list(tasks)}")
    from tqdm.auto import tqdm

    from tsembed.backbones.minilm_effnet import MiniLMEfficientNetBackbone
    from tsembed.training.align import effective_options, suite_context, vision_features

    options = effective_options({k: v for k, v in (backbone_options or {}).items() if k != "kind"})
    ctx, _ = suite_context(Path(suite))
    torch.manual_seed(0)  # the random projector every earlier study started from (seed 0)
    backbone = MiniLMEfficientNetBackbone(**options).eval()
    random_state = {k: v.clone() for k, v in backbone.projector.state_dict().items()}
    if bridge is not None:
        backbone = MiniLMEfficientNetBackbone(**options, bridge=str(bridge)).eval()
    rng = random.Random(f"probes/{seed}")
    train, dev = _images(ctx, "train", per_task, rng), _images(ctx, "dev", per_task, rng)
    identity_images, num_items, num_tints = _identity_images(ctx, per_task // 4, rng)
    gender_rng = random.Random(f"probes/{seed}/gender")
    for split, part in (("train", train), ("dev", dev)):
        looks = _gender_looks(ctx, split, per_task, gender_rng)
        part["gender"] = ([ctx.renderer.single(look.item.char) for look in looks], [look.attribute for look in looks])
    everyone = [look for looks in gender_variants(ctx, "dev").values() for look in looks]  # whole emoji, all genders
    stages = representations(backbone, random_state)

    def vectors(images: list) -> dict[str, np.ndarray]:
        features = vision_features(backbone, images, progress=False).float()
        out: dict[str, list] = {name: [] for name in stages}
        for start in range(0, features.shape[0], 128):
            chunk = features[start : start + 128]
            for name, fn in stages.items():
                out[name].append(fn(chunk).float().numpy())
        return {name: np.concatenate(parts) for name, parts in out.items()}

    results: dict[str, dict[str, float]] = {name: {} for name in stages}
    linear = [task for task in train if task in tasks]
    neighbours = [task for task in ("identity", "gender_identity") if task in tasks]
    with tqdm(total=len(linear) + len(neighbours), desc="bridge probes", unit="probe", disable=not progress) as bar:
        for task in linear:
            train_v, dev_v = vectors(train[task][0]), vectors(dev[task][0])
            for name in stages:
                results[name][task] = round(probe_accuracy(train_v[name], train[task][1], dev_v[name],
                                                           dev[task][1], seed), 4)
            bar.update(1)
        if "identity" in tasks:
            identity_v = vectors(identity_images)
            for name in stages:
                results[name]["identity"] = round(identity_accuracy(identity_v[name], num_items, num_tints), 4)
            bar.update(1)
        if "gender_identity" in tasks:
            gender_v = vectors([ctx.renderer.single(look.item.char) for look in everyone])
            keys = ([_gender_identity(look.item) for look in everyone], [look.attribute for look in everyone],
                    [look.item.tone or "" for look in everyone])
            for name in stages:
                results[name]["gender_identity"] = round(gender_identity_accuracy(gender_v[name], *keys), 4)
            bar.update(1)
    return results
