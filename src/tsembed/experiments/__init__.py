"""Experiments that combine training and evaluation: the ablation (DESIGN §7) and the demo."""
