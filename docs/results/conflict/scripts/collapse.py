"""Mean pairwise cosine of 40 TintSameColour dev queries and of their positives under a trained model (1.0 = collapsed).

Usage: python docs/results/conflict/scripts/collapse.py MODEL_DIR [TASK|-]
"""
import json, sys, torch
from tsembed.inference.encoder import Encoder
from tsembed.inputs import EmbedInput
model_dir, task = sys.argv[1], (sys.argv[2] if len(sys.argv) > 2 and sys.argv[2] != "-" else None)
enc = Encoder.from_pretrained(model_dir, device="cpu")
rows = [json.loads(l) for l in open("suite-conflict/dev/TintSameColour.jsonl")][:40]
q = [EmbedInput(text=r["qry_text"], image="suite-conflict/" + r["qry_img_path"], task=task) for r in rows]
t = [EmbedInput(text=r["tgt_text"][0], image="suite-conflict/" + r["tgt_img_path"][0], task=task) for r in rows]
for name, items in (("queries", q), ("targets", t)):
    e = torch.as_tensor(enc.encode(items))
    e = torch.nn.functional.normalize(e.float(), dim=-1)
    c = e @ e.T
    off = c[~torch.eye(len(e), dtype=bool)]
    print(f"{model_dir.split('/')[3]} task={task} {name}: mean off-diag cosine {off.mean():.4f} min {off.min():.4f}")
