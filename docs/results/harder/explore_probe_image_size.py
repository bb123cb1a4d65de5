"""Exploratory, after the study (not pre-registered; train -> dev bases only): does a larger input make gender
readable from EfficientNet-Lite0's features? Linear probes of gender and skin tone, and nearest-neighbour identity
across genders, on the raw features (R0) and frozen MiniLM over the random projector (R1_minilm).

    python docs/results/harder/explore_probe_image_size.py suites/tone-gender-s0 128
    python docs/results/harder/explore_probe_image_size.py suites/tone-gender-s0 256
"""
import json
import sys

import torch

from tsembed.experiments.probes import run_probes

torch.set_num_threads(1)

size = int(sys.argv[2])
r = run_probes(sys.argv[1], None, per_task=400, seed=0, backbone_options={"image_size": size}, progress=False,
               tasks=("gender", "gender_identity", "tone"))
print(size, json.dumps({k: v for k, v in r.items() if k in ("R0", "R1_minilm")}))
