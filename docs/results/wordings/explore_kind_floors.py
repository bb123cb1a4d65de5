"""Exploratory, dev only (after the eval read; not a pre-registered arm): where a composed model with a fallback
would route dev queries if every expert kept pilots and a floor per kind of input (text alone, with an image) and an
input met only pilots of its own kind. Prints each floor, then per dev dataset the share routed right / to the
fallback / to a wrong expert, on the original dev split and the two reworded copies.

    python docs/results/wordings/explore_kind_floors.py COMPOSED_FALLBACK_MODEL SUITE PARA_PREFIX
"""

import sys

import torch

from tsembed.data.suite import load_suite
from tsembed.encoding import embed_items
from tsembed.inference.calibration import pair_inputs
from tsembed.inference.compose import owned_datasets
from tsembed.model import TSEmbedModel
from tsembed.moe.pilot import PilotRouter, fit_pilots, pilot_floor

QUANTILE, PILOTS, ROWS = 0.05, 4, 512  # the amendment's settings

torch.set_num_threads(1)
model = TSEmbedModel.from_pretrained(sys.argv[1])
suite = load_suite(sys.argv[2])
owner = owned_datasets(model)
names = model.config.moe.expert_names
fallback = model.pilot_router.fallback

table = {}  # (expert, has image) -> (a one-expert router over that kind's pilots, its floor)
for e, record in enumerate(model.config.extra["composed_from"]):
    if record.get("fallback"):
        continue
    items = [x for d in record["train_datasets"] for x in pair_inputs(suite.train(d), ROWS)]
    embeddings = embed_items(model, items, 64, pilot=True).embeddings
    kinds = torch.tensor([x.image is not None for x in items])
    for kind in (False, True):
        rows = embeddings[kinds == kind]
        if rows.shape[0]:
            router = PilotRouter(fit_pilots(rows, PILOTS, 0).unsqueeze(0))
            table[(e, kind)] = (router, pilot_floor(router.affinity(rows)[:, 0], QUANTILE))
print({f"{names[e]}/{'image' if k else 'text'}": round(f, 3) for (e, k), (_, f) in table.items()})

for source in [sys.argv[2], sys.argv[3] + "0", sys.argv[3] + "1"]:
    loaded, out = load_suite(source), []
    for name in loaded.names(split="dev"):
        rows = loaded.eval(name, split="dev")
        queries = [r.query_input(rows.image_root) for r in rows.rows]
        embeddings = embed_items(model, queries, 64, pilot=True).embeddings
        kind = queries[0].image is not None
        candidates = [(e, r, f) for (e, k), (r, f) in table.items() if k == kind]
        affinity = torch.stack([r.affinity(embeddings)[:, 0] for _, r, _ in candidates], dim=1)
        best = affinity.argmax(dim=1).tolist()
        route = torch.tensor([candidates[b][0] if affinity[i, b] >= candidates[b][2] else fallback
                              for i, b in enumerate(best)])
        right, back = float((route == owner[name]).float().mean()), float((route == fallback).float().mean())
        out.append(f"{name}:{right:.2f}/{back:.2f}/{1 - right - back:.2f}")
    print(source.split("/")[-1], "right/fallback/wrong", " ".join(out))
