"""Built-in, deterministic post-training recipes (the reference agent's training code).

* ``reference-sft`` -> :func:`posttrainbench.recipes.sft.train_sft` (also ``python -m posttrainbench.recipes.sft``).

Importing this package is cheap: torch/transformers/trl are imported when a recipe runs.
"""

from __future__ import annotations

RECIPES = {"reference-sft": "posttrainbench.recipes.sft:train_sft"}

__all__ = ["RECIPES"]
