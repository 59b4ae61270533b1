"""Calibrated probabilities: the model's own learned temperature and bias (SigLIP's sigmoid), and the seed's
fixed-temperature rule as a tool to compare against.

**Learned calibration (the default).** SigLIP (Zhai et al. 2023, "Sigmoid Loss for Language Image Pre-Training",
arXiv:2303.15343, Algorithm 1) is trained with a pairwise sigmoid loss on the logits ``exp(t') * cos + b``; ``t'``
(``logit_scale``) and ``b`` (``logit_bias``) are learned (initialised at ``t' = log 10``, ``b = -10``, paper section
3.2) and ship with every checkpoint. So ``sigmoid(exp(t') * cos + b)`` is the model's own estimate that an image and a
text match. CLIP was trained with a softmax over the batch and has no bias, so there is no calibrated probability for
it, and none for image -> image similarity either.

**Fixed temperature (seed 003).** Earlier systems used a hand-picked "temperature" ``T`` (10 ... 30) and no bias:
``sigmoid(T * cos)`` (``calibrate_siglip_score``, ``Calibration.from_temperature``). It is a guess the model never
made: it maps ``cos = 0`` to 0.5, and with SigLIP's learned bias (strongly negative) the learned probability of the
same cosine is far lower. It stays available to compare (``img-search debug-scores``) and to override the learned
calibration for one search (``--temperature T``). docs/SEARCH.md, "Scores and calibration", has the seed's table and
the two slips in it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, overload

import numpy as np
from numpy.typing import ArrayLike, NDArray

from img_search.errors import InvalidInputError

#: The seed's default temperature (seed 003, "temperature = 25 (current default)").
SEED_TEMPERATURE = 25.0
#: The temperatures the seed's tuning guide walks through ("X=10: very lenient" ... "X=30: very strict").
SEED_TEMPERATURES: tuple[float, ...] = (10.0, 15.0, 20.0, 25.0, 30.0)


def sigmoid(z: ArrayLike) -> NDArray[np.float64]:
    """The logistic function ``1 / (1 + exp(-z))`` in float64, elementwise, same shape as ``z``.

    Numerically stable for both signs: only ``exp(-|z|)`` is ever computed, so no overflow warning for large ``|z|``
    (``sigmoid(-1000) == 0.0``, ``sigmoid(1000) == 1.0``).
    """
    x = np.asarray(z, dtype=np.float64)
    e = np.exp(-np.abs(x))
    return np.asarray(np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e)), dtype=np.float64)


def check_temperature(temperature: Any) -> float:
    """``temperature`` as a finite float > 0, or ``InvalidInputError`` (a ``--temperature`` value, a config value)."""
    if isinstance(temperature, bool):
        raise InvalidInputError(f"temperature must be a number > 0, got {temperature!r}")
    try:
        value = float(temperature)
    except (TypeError, ValueError):
        raise InvalidInputError(f"temperature must be a number > 0, got {temperature!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise InvalidInputError(f"temperature must be a finite number > 0, got {temperature!r}")
    return value


@overload
def calibrate_siglip_score(raw_similarity: float, temperature: float = ...) -> np.float64: ...


@overload
def calibrate_siglip_score(raw_similarity: NDArray[Any], temperature: float = ...) -> NDArray[np.float64]: ...


def calibrate_siglip_score(raw_similarity: float | NDArray[Any],
                           temperature: float = SEED_TEMPERATURE) -> np.float64 | NDArray[np.float64]:
    """The seed's calibration: ``sigmoid(temperature * raw_similarity)`` (seed 003, ``embeddings.py``).

    ``raw_similarity`` is a cosine in [-1, 1] (a Python/numpy scalar or an array of any shape); the result has the same
    shape, float64 (a ``np.float64`` for a scalar), each value in [0, 1]. ``temperature`` plays the role of
    SigLIP's ``exp(t')`` with the learned bias ``b`` dropped (Zhai et al. 2023): a hand-picked multiplier, 25 by
    default as in the seed. With ``temperature=25``: -0.20 -> 0.007, -0.10 -> 0.076, -0.05 -> 0.223, 0.00 -> 0.500,
    0.10 -> 0.924, 0.20 -> 0.993 (the seed's table says 0.230 for -0.05: a slip; docs/SEARCH.md).

    Raises ``InvalidInputError`` when ``temperature`` is not a finite number > 0, or ``raw_similarity`` is not numeric
    or holds NaN / infinity.
    """
    t = check_temperature(temperature)
    try:
        cos = np.asarray(raw_similarity, dtype=np.float64)
    except (TypeError, ValueError):
        raise InvalidInputError(f"raw similarity must be a number or an array of numbers, got {raw_similarity!r}") \
            from None
    if not np.all(np.isfinite(cos)):
        raise InvalidInputError("raw similarity must be finite (got NaN or infinity)")
    out = sigmoid(t * cos)
    return out if out.ndim else np.float64(out)


@dataclass(frozen=True)
class Calibration:
    """``probability(cos) = sigmoid(exp(logit_scale) * cos + logit_bias)``, elementwise.

    Built from a model's learned ``t'`` / ``b`` (``Calibration.maybe``, SigLIP) or from a fixed temperature with no
    bias (``Calibration.from_temperature``, the seed's rule); a searcher swaps one for the other to apply
    ``--temperature T`` to one search.
    """

    logit_scale: float  # t'; the multiplier is exp(t')
    logit_bias: float

    @classmethod
    def maybe(cls, logit_scale: float | None, logit_bias: float | None) -> Calibration | None:
        """The learned calibration, or None when the model has no bias (CLIP: softmax-trained)."""
        if logit_scale is None or logit_bias is None:
            return None
        return cls(float(logit_scale), float(logit_bias))

    @classmethod
    def from_temperature(cls, temperature: float) -> Calibration:
        """The seed's fixed-temperature rule as a ``Calibration``: ``logit_scale = log(temperature)``, bias 0, so
        ``probability(cos) == calibrate_siglip_score(cos, temperature)``. Works for any model (CLIP too: it is a
        rescaling of the cosine, not something the model learned). Raises ``InvalidInputError`` for a temperature that
        is not a finite number > 0."""
        return cls(math.log(check_temperature(temperature)), 0.0)

    @property
    def temperature(self) -> float:
        """The multiplier ``exp(logit_scale)`` applied to the cosine."""
        return float(np.exp(self.logit_scale))

    def logits(self, cosine: NDArray[np.floating] | float) -> NDArray[np.float64]:
        """``exp(logit_scale) * cosine + logit_bias`` in float64, same shape as ``cosine``."""
        return np.exp(np.float64(self.logit_scale)) * np.asarray(cosine, dtype=np.float64) + self.logit_bias

    def probability(self, cosine: NDArray[np.floating] | float) -> NDArray[np.float64]:
        """``sigmoid(logits(cosine))`` in float64, same shape as ``cosine``, each value in [0, 1]."""
        return sigmoid(self.logits(cosine))

    def cosine_for(self, probability: float) -> float:
        """The cosine at which the model's probability equals ``probability`` (inverse, for thresholds)."""
        p = min(max(probability, 1e-12), 1 - 1e-12)
        return float((np.log(p / (1 - p)) - self.logit_bias) / np.exp(self.logit_scale))
