"""Experiments that combine training and evaluation: the ablation (docs/design.md §7) and the demo."""
