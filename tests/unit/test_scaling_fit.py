"""Scaling-law fits against data made from known coefficients: exact, noisy, and CI coverage."""

import json

import numpy as np
import pytest

from bigtrain.errors import ConfigError
from bigtrain.plan.scaling import fit_chinchilla, fit_power_law

E, A, ALPHA = 1.5, 40.0, 0.35
B, BETA = 400.0, 0.3
SIZES = np.geomspace(1e4, 1e6, 6)


def law(n):
    return E + A * np.asarray(n, dtype=float) ** -ALPHA


def chinchilla_grid():
    n, d = np.meshgrid(np.geomspace(1e4, 1e6, 4), np.geomspace(1e6, 1e8, 3))
    n, d = n.ravel(), d.ravel()
    return n, d, E + A * n**-ALPHA + B * d**-BETA


def test_power_law_recovers_exact_coefficients_without_noise():
    fit = fit_power_law(SIZES, law(SIZES))
    est = fit.estimates()
    assert fit.form == "E + A*N^-alpha" and fit.dof == 3 and fit.note == ""
    assert est["E"].value == pytest.approx(E, rel=1e-6)
    assert est["A"].value == pytest.approx(A, rel=1e-6)
    assert est["alpha"].value == pytest.approx(ALPHA, rel=1e-6)
    assert fit.residual_std < 1e-9
    assert fit.predict(1e8) == pytest.approx(law(1e8), rel=1e-6)


def test_fewer_than_four_sizes_fit_two_parameters_and_say_so():
    n = np.array([1e4, 1e5, 1e6])
    fit = fit_power_law(n, A * n**-ALPHA)
    assert fit.form == "A*N^-alpha" and "2-parameter" in fit.note and fit.dof == 1
    est = fit.estimates()
    assert set(est) == {"A", "alpha"}
    assert est["alpha"].value == pytest.approx(ALPHA, rel=1e-9)
    assert est["A"].value == pytest.approx(A, rel=1e-9)
    # two sizes: exact, and no interval can be estimated
    two = fit_power_law(n[:2], A * n[:2] ** -ALPHA)
    assert two.dof == 0 and two.estimates()["alpha"].low is None
    assert np.isnan(two.interval(1e7)[0])


def test_noisy_power_law_recovers_coefficients_within_their_intervals():
    rng = np.random.default_rng(0)
    n = np.geomspace(1e4, 1e6, 8)
    loss = law(n) * np.exp(rng.normal(0, 0.005, n.size))
    fit = fit_power_law(n, loss)
    est = fit.estimates(0.95)
    for name, truth in (("E", E), ("A", A), ("alpha", ALPHA)):
        assert est[name].low <= truth <= est[name].high, (name, est[name])
    assert est["alpha"].value == pytest.approx(ALPHA, abs=0.1)
    low, high = fit.interval(1e7)
    assert low <= law(1e7) <= high and low < fit.predict(1e7) < high
    # the band is narrow among the data and widens away from it
    near = np.subtract(*fit.interval(1e5)[::-1])
    far = np.subtract(*fit.interval(1e8)[::-1])
    assert far > 3 * near
    json.dumps(fit.to_dict())  # what scaling.json holds


def test_confidence_intervals_hold_about_their_level():
    rng = np.random.default_rng(1)
    n = np.geomspace(1e4, 1e6, 6)
    trials, hits, band_hits = 200, 0, 0
    for _ in range(trials):
        fit = fit_power_law(n, law(n) * np.exp(rng.normal(0, 0.01, n.size)))
        alpha = fit.estimates(0.95)["alpha"]
        hits += alpha.low <= ALPHA <= alpha.high
        low, high = fit.interval(1e7, 0.95)
        band_hits += low <= law(1e7) <= high
    # binomial sd at 95% over 200 trials is 1.5%: [0.88, 0.99] is ~4 sd below and 2.5 above;
    # (measured with this seed: 0.945 and 0.94)
    assert 0.88 <= hits / trials <= 0.99
    assert 0.88 <= band_hits / trials <= 0.99


def test_chinchilla_recovers_exact_coefficients_and_noisy_ones_within_cis():
    n, d, loss = chinchilla_grid()
    fit = fit_chinchilla(n, d, loss)
    est = fit.estimates()
    truth = {"E": E, "A": A, "alpha": ALPHA, "B": B, "beta": BETA}
    for name, value in truth.items():
        assert est[name].value == pytest.approx(value, rel=1e-5), name
    assert fit.predict(1e7, 1e9) == pytest.approx(E + A * 1e7**-ALPHA + B * 1e9**-BETA, rel=1e-6)
    rng = np.random.default_rng(2)
    noisy = fit_chinchilla(n, d, loss * np.exp(rng.normal(0, 0.003, loss.size)))
    est = noisy.estimates()
    for name, value in truth.items():
        assert est[name].low <= value <= est[name].high, (name, est[name])
    low, high = noisy.interval(1e5, 1e7)
    assert low < noisy.predict(1e5, 1e7) < high


def test_chinchilla_with_five_points_is_exact_and_has_no_intervals():
    n, d, loss = chinchilla_grid()
    fit = fit_chinchilla(n[:5], d[:5], loss[:5])
    assert fit.dof == 0 and fit.estimates()["beta"].low is None


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: fit_power_law([1e4, 1e4], [3.0, 2.9]), "at least 2 distinct sizes"),
        (lambda: fit_power_law([1e4], [3.0]), "at least 2 distinct sizes"),
        (lambda: fit_power_law([0, 1e4], [3.0, 2.0]), "positive"),
        (lambda: fit_power_law([1e3, 1e4], [3.0, float("nan")]), "positive"),
        (lambda: fit_power_law([1e3, 1e4, 1e5], [3.0, 2.0]), "same length"),
        (lambda: fit_power_law([1e3, 1e4], [3, 2], irreducible=True), "3 distinct sizes"),
        (lambda: fit_chinchilla([1, 2, 3, 4], [1, 2, 3, 4], [4, 3, 2, 1]), ">= 5 points"),
        (lambda: fit_chinchilla([1] * 5, [1, 2, 3, 4, 5], [5, 4, 3, 2, 1]), "2 distinct N"),
    ],
)
def test_bad_input_is_one_config_error_line(call, message):
    with pytest.raises(ConfigError, match=message) as info:
        call()
    assert "\n" not in str(info.value)
