"""Exploratory, dev only (compose README, amendment 3): the pilots against a logistic-regression router fitted on
the base model's text-view embeddings of each expert's training queries, routing accuracy per dev dataset.

    python docs/results/compose/explore_probe_router.py COMPOSED_MODEL SUITE PARA_PREFIX [C]

prints, per copy (original dev, PARA_PREFIX0, PARA_PREFIX1), pilot / probe routing accuracy.
"""
import sys

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

from tsembed.data.suite import load_suite
from tsembed.encoding import embed_items
from tsembed.inference.calibration import pair_inputs
from tsembed.model import TSEmbedModel

model = TSEmbedModel.from_pretrained(sys.argv[1])
suite = load_suite(sys.argv[2])
owner = {d: e for e, r in enumerate(model.config.extra["composed_from"]) for d in r["train_datasets"]}
X, y = [], []
for name, e in owner.items():
    items = pair_inputs(suite.train(name), 256)[0::2]  # queries only
    X.append(embed_items(model, items, 64, pilot=True).embeddings)
    y += [e] * len(items)
X, y = torch.cat(X).numpy(), np.array(y)
clf = LogisticRegression(C=float(sys.argv[4]) if len(sys.argv) > 4 else 1.0, max_iter=2000).fit(X, y)
for src in [sys.argv[2], sys.argv[3] + '0', sys.argv[3] + '1']:
    s = load_suite(src)
    out = []
    for name in s.names(split='dev'):
        ev = s.eval(name, split='dev')
        items = [r.query_input(ev.image_root) for r in ev.rows]
        emb = embed_items(model, items, 64, pilot=True).embeddings
        pilot = model.pilot_router(emb).argmax(-1).numpy()
        probe = clf.predict(emb.numpy())
        out.append((name, (pilot == owner[name]).mean(), (probe == owner[name]).mean()))
    print(src.split('/')[-1], ' '.join(f"{n}:{a:.2f}/{b:.2f}" for n, a, b in out),
          f"mean pilot {np.mean([o[1] for o in out]):.3f} probe {np.mean([o[2] for o in out]):.3f}")
