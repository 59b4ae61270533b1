"""The seed's calibration tools: ``calibrate_siglip_score`` against the seed's table (true values where the table
slipped), the fixed-temperature ``Calibration``, and input checks."""

from __future__ import annotations

import math

import numpy as np
import pytest

from img_search.errors import InvalidInputError
from img_search.search.calibration import (
    SEED_TEMPERATURES,
    Calibration,
    calibrate_siglip_score,
    check_temperature,
    sigmoid,
)

# seed 003's table at temperature 25, where it is arithmetically right (3 decimals)
SEED_TABLE_T25 = [(-0.20, 0.007), (-0.10, 0.076), (0.00, 0.500), (0.10, 0.924), (0.20, 0.993)]


@pytest.mark.parametrize(("raw", "expected"), SEED_TABLE_T25)
def test_matches_the_seeds_table(raw: float, expected: float) -> None:
    assert round(float(calibrate_siglip_score(raw)), 3) == expected
    assert round(float(calibrate_siglip_score(raw, temperature=25)), 3) == expected


def test_the_seeds_slips_are_not_reproduced() -> None:
    # the seed's table says -0.05 -> 0.230 at T=25: sigmoid(-1.25) = 0.2227
    value = float(calibrate_siglip_score(-0.05, 25))
    assert round(value, 3) == 0.223 and round(value, 3) != 0.230
    assert value == pytest.approx(1 / (1 + math.exp(1.25)), abs=1e-15)
    # and "0.19 with temp=18": sigmoid(-0.9) = 0.2891 (lowering T raises the score of a negative cosine)
    at18 = float(calibrate_siglip_score(-0.05, 18))
    assert round(at18, 3) == 0.289 and at18 > value


def test_shapes_and_dtypes() -> None:
    scalar = calibrate_siglip_score(0.1)
    assert isinstance(scalar, np.float64) and np.ndim(scalar) == 0
    grid = np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4)
    out = calibrate_siglip_score(grid, 15.0)
    assert out.shape == (3, 4) and out.dtype == np.float64
    np.testing.assert_allclose(out, 1 / (1 + np.exp(-15.0 * grid.astype(np.float64))), rtol=1e-12)
    assert np.all(np.diff(out.reshape(-1)) > 0)  # monotone in the cosine


def test_numerically_stable_for_large_logits() -> None:
    with np.errstate(over="raise", invalid="raise", divide="raise"):  # no overflow, no NaN
        out = sigmoid(np.array([-1e4, -800.0, 0.0, 800.0, 1e4]))
    np.testing.assert_array_equal(out, [0.0, 0.0, 0.5, 1.0, 1.0])
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        assert calibrate_siglip_score(np.array([-1.0, 1.0]), temperature=1e6).tolist() == [0.0, 1.0]


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), float("inf"), "hot", None, True])
def test_bad_temperature_is_invalid_input(bad: object) -> None:
    with pytest.raises(InvalidInputError, match="temperature"):
        calibrate_siglip_score(0.1, bad)  # type: ignore[call-overload]
    with pytest.raises(InvalidInputError, match="temperature"):
        Calibration.from_temperature(bad)  # type: ignore[arg-type]


def test_bad_similarity_is_invalid_input() -> None:
    with pytest.raises(InvalidInputError, match="finite"):
        calibrate_siglip_score(np.array([0.1, np.nan]))
    with pytest.raises(InvalidInputError, match="number"):
        calibrate_siglip_score("high")  # type: ignore[call-overload]


def test_check_temperature_accepts_numbers() -> None:
    assert check_temperature(25) == 25.0 and check_temperature("17.5") == 17.5
    assert SEED_TEMPERATURES == (10.0, 15.0, 20.0, 25.0, 30.0)


@pytest.mark.parametrize("temperature", SEED_TEMPERATURES)
def test_from_temperature_is_the_seeds_rule(temperature: float) -> None:
    calib = Calibration.from_temperature(temperature)
    assert calib.logit_bias == 0.0 and calib.logit_scale == pytest.approx(math.log(temperature))
    assert calib.temperature == pytest.approx(temperature)
    cos = np.linspace(-0.3, 0.3, 25)
    np.testing.assert_allclose(calib.probability(cos), calibrate_siglip_score(cos, temperature), rtol=1e-12)
    # the inverse used for thresholds round-trips
    assert calib.cosine_for(float(calib.probability(0.07))) == pytest.approx(0.07, abs=1e-9)


def test_learned_calibration_differs_from_the_seeds_guess() -> None:
    """SigLIP's learned bias moves the 0.5 point away from cos = 0 (the paper's init: t' = log 10, b = -10)."""
    learned = Calibration(math.log(10.0), -10.0)
    assert float(learned.probability(0.0)) == pytest.approx(1 / (1 + math.exp(10.0)))
    assert learned.cosine_for(0.5) == pytest.approx(1.0)
    assert float(Calibration.from_temperature(10.0).probability(0.0)) == 0.5
