"""A bridge alignment small enough for end-to-end tests: the default config aligns its bridge (`bridge: auto`)."""

TINY_ALIGN = {"align.steps": 2, "align.max_emoji": 8, "align.canvases": 2, "align.batch_size": 4,
              "align.held_out": 4, "align.warmup_steps": 1}
#: The same as ``--set`` arguments.
TINY_ALIGN_ARGS = [arg for key, value in TINY_ALIGN.items() for arg in ("--set", f"{key}={value}")]
