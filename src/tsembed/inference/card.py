"""Former home of the model-card builder, now ``tsembed.card``; this path stays importable for a release."""

from tsembed.card import CARD_NAME, build_model_card, render_model_card, save_with_card, write_model_card

__all__ = ["CARD_NAME", "build_model_card", "render_model_card", "save_with_card", "write_model_card"]
