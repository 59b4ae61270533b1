"""Training: fine-tuning SigLIP / SigLIP 2 checkpoints on image-caption pairs (``finetune.py``).

Kept import-light: torch and transformers load only when a fine-tune runs.
"""

from __future__ import annotations

from img_search.training.finetune import (
    EpochResult,
    FinetuneOptions,
    FinetuneReport,
    Pair,
    PairProblem,
    PairSet,
    Recall,
    finetune,
    read_pairs,
    sigmoid_loss,
    split_pairs,
)

__all__ = ["EpochResult", "FinetuneOptions", "FinetuneReport", "Pair", "PairProblem", "PairSet", "Recall", "finetune",
           "read_pairs", "sigmoid_loss", "split_pairs"]
