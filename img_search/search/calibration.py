"""Calibrated probabilities from the model's own learned temperature and bias (SigLIP's sigmoid).

SigLIP is trained with a pairwise sigmoid loss on ``exp(t') * cos + b``; ``t'`` (logit_scale) and
``b`` (logit_bias) are learned and ship with every checkpoint. So ``sigmoid(exp(t') * cos + b)`` is
the model's own estimate that an image matches a text. Earlier systems used a hand-picked
"temperature" (15, 18, 25, ...) and no bias: that is a guess, and it maps cos = 0 to 0.5, which the
model never meant. CLIP was trained with a softmax over the batch and has no bias, so there is no
calibrated probability for it, and none for image -> image similarity either.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray


@dataclass(frozen=True)
class Calibration:
    logit_scale: float  # t'; the multiplier is exp(t')
    logit_bias: float

    @classmethod
    def maybe(cls, logit_scale: float | None, logit_bias: float | None) -> Calibration | None:
        if logit_scale is None or logit_bias is None:
            return None
        return cls(float(logit_scale), float(logit_bias))

    @property
    def temperature(self) -> float:
        return float(np.exp(self.logit_scale))

    def logits(self, cosine: NDArray[np.floating] | float) -> NDArray[np.float64]:
        return np.exp(np.float64(self.logit_scale)) * np.asarray(cosine, dtype=np.float64) + self.logit_bias

    def probability(self, cosine: NDArray[np.floating] | float) -> NDArray[np.float64]:
        z = self.logits(cosine)
        # numerically stable sigmoid for both signs
        return np.where(z >= 0, 1.0 / (1.0 + np.exp(-np.abs(z))), np.exp(-np.abs(z)) / (1.0 + np.exp(-np.abs(z))))

    def cosine_for(self, probability: float) -> float:
        """The cosine at which the model's probability equals ``probability`` (inverse, for thresholds)."""
        p = min(max(probability, 1e-12), 1 - 1e-12)
        return float((np.log(p / (1 - p)) - self.logit_bias) / np.exp(self.logit_scale))
