"""BD-rate: known shifts of a curve, and PCHIP's defining properties."""
import numpy as np
import pytest

from benchmarks.bjontegaard import bd_rate, pchip_eval


RATES = np.array([0.25, 0.5, 1.0, 2.0])
PSNR = np.array([27.0, 30.5, 33.2, 36.1])


@pytest.mark.parametrize("factor", [0.5, 0.8, 1.0, 1.3])
def test_a_curve_scaled_in_rate_has_that_bd_rate(factor):
    assert bd_rate(RATES, PSNR, RATES * factor, PSNR) == pytest.approx(100 * (factor - 1), abs=1e-9)


def test_better_quality_at_the_same_rate_is_a_negative_bd_rate():
    assert bd_rate(RATES, PSNR, RATES, PSNR + 1.0) < 0
    assert bd_rate(RATES, PSNR, RATES, PSNR - 1.0) > 0


def test_no_overlap_gives_none():
    assert bd_rate(RATES, PSNR, RATES, PSNR + 20) is None
    assert bd_rate(RATES[:1], PSNR[:1], RATES, PSNR) is None


def test_pchip_interpolates_and_stays_monotone():
    x, y = PSNR, np.log10(RATES)
    np.testing.assert_allclose(pchip_eval(x, y, x), y)
    dense = pchip_eval(x, y, np.linspace(x[0], x[-1], 500))
    assert np.all(np.diff(dense) >= 0)
    # a straight line is reproduced exactly
    np.testing.assert_allclose(pchip_eval(x, 2 * x + 1, np.array([28.0, 35.0])), [57.0, 71.0])
