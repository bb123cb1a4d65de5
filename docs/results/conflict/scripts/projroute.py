"""Which projector expert a trained projector mixture sends each image instruction of the suite to (§10).

Usage: python docs/results/conflict/scripts/projroute.py MODEL_DIR [SUITE]
Reads every split's rows, collects the distinct texts of image-bearing inputs, and prints instruction → expert
(router probabilities in brackets).
"""
import glob
import json
import sys
from pathlib import Path

import torch

from tsembed.backbones.placeholder import split_inputs
from tsembed.inference.encoder import Encoder
from tsembed.inputs import EmbedInput

model_dir, suite = sys.argv[1], Path(sys.argv[2] if len(sys.argv) > 2 else "suite-conflict")
backbone = Encoder.from_pretrained(model_dir, device="cpu").model.backbone
texts = set()
for path in glob.glob(str(suite / "*" / "*.jsonl")):
    for line in open(path):
        row = json.loads(line)
        pairs = [(row.get("qry") or row.get("qry_text"), row.get("qry_image_path") or row.get("qry_img_path"))]
        pairs += [(row.get("pos_text"), row.get("pos_image_path")), (row.get("neg_text"), row.get("neg_image_path"))]
        pairs += list(zip(row.get("tgt_text") or [], row.get("tgt_img_path") or [], strict=True))
        texts |= {seg.text for text, image in pairs if text is not None and image
                  for seg in split_inputs([EmbedInput(text, image)])}
texts = sorted(texts)
route = backbone.route_embeddings(texts)
with torch.no_grad():
    probs = torch.softmax(backbone.projector.router(route), dim=-1)
for text, p in sorted(zip(texts, probs, strict=True), key=lambda item: int(item[1].argmax())):
    print(f"expert {int(p.argmax())} [{' '.join(f'{v:.2f}' for v in p.tolist())}]  {text}")
