"""Scaling-law fits as plain functions: numbers in, a fit with confidence intervals out.

Two forms:

* ``fit_power_law(n, loss)``: L(N) = E + A·N^-alpha (Kaplan et al. 2020, eq. 1.1 plus an
  irreducible loss E). With fewer than 4 distinct sizes the 3-parameter form has at most zero
  degrees of freedom left, so the 2-parameter L = A·N^-alpha is fitted instead (``fit.note``
  says so).
* ``fit_chinchilla(n, d, loss)``: L(N, D) = E + A/N^alpha + B/D^beta (Hoffmann et al. 2022,
  eq. 2), for runs that vary both the parameter count N and the data seen D.

How: least squares on log L (the noise of a final loss is roughly multiplicative, and log space
keeps the small losses of big models from being swamped), started from a grid over the
exponents on which the linear coefficients are solved exactly (non-negative least squares),
then refined by ``scipy.optimize.least_squares``.

Confidence intervals come from the covariance of the estimate, s²(JᵀJ)⁻¹, with Student-t
quantiles at m - p degrees of freedom. Why not a bootstrap: a scaling sweep has 4 to 10 points.
Resampling points leaves too few distinct sizes to fit three parameters, and resampled
residuals of a 3-parameter fit to 5 points are shrunk versions of the noise, so both give
intervals that are too narrow; the t quantile at 1 or 2 degrees of freedom (12.7, 4.3) is honest
about how little a handful of points pins down. A coverage test on synthetic data
(tests/unit/test_scaling_fit.py) checks the intervals hold their level. Bands and
extrapolations use the delta method on log L, so they are positive and widen away from the data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import optimize, stats

from bigtrain.errors import ConfigError

_EXPONENT_GRID = np.linspace(0.02, 3.0, 150)  # starting points for alpha (and beta)
_MAX_EXPONENT = 10.0


@dataclass(frozen=True)
class Estimate:
    """A fitted coefficient and its confidence interval (None when it cannot be estimated)."""

    value: float
    low: float | None
    high: float | None


@dataclass
class _LogFit:
    """A least-squares fit on log L: parameters ``theta``, their covariance and the data."""

    theta: np.ndarray
    cov: np.ndarray | None  # None with no degrees of freedom left (an exact fit)
    dof: int
    inputs: tuple[np.ndarray, ...]  # log N (and log D) of the points
    loss: np.ndarray
    note: str = ""
    names: tuple[str, ...] = field(default=())

    # subclasses: log of the model and its gradient w.r.t. theta, at log-inputs xs
    def _log_f(self, theta: np.ndarray, *xs: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _grad(self, theta: np.ndarray, *xs: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    @property
    def residual_std(self) -> float:
        """Root-mean-square residual of log L (≈ the relative error of a fitted loss)."""
        r = np.log(self.loss) - self._log_f(self.theta, *self.inputs)
        return float(np.sqrt(np.mean(r**2)))

    def _t(self, level: float) -> float:
        if not 0 < level < 1:
            raise ConfigError(f"confidence level must be between 0 and 1, got {level}")
        return float(stats.t.ppf(0.5 + level / 2, self.dof))

    def _predict(self, *xs: Any) -> np.ndarray:
        logs = [np.log(_positive(x, "input")) for x in np.broadcast_arrays(*map(np.asarray, xs))]
        return np.exp(self._log_f(self.theta, *logs))

    def _interval(self, level: float, *xs: Any) -> tuple[np.ndarray, np.ndarray]:
        logs = [np.log(_positive(x, "input")) for x in np.broadcast_arrays(*map(np.asarray, xs))]
        centre = self._log_f(self.theta, *logs)
        if self.cov is None:
            nan = np.full_like(centre, np.nan)
            return nan, nan
        g = self._grad(self.theta, *logs)  # (..., p)
        se = np.sqrt(np.maximum(np.einsum("...i,ij,...j->...", g, self.cov, g), 0.0))
        half = self._t(level) * se
        return np.exp(centre - half), np.exp(centre + half)

    def _raw_estimates(self, level: float) -> dict[str, Estimate]:
        out = {}
        half = (
            self._t(level) * np.sqrt(np.maximum(np.diag(self.cov), 0.0))
            if self.cov is not None
            else None
        )
        for i, name in enumerate(self.names):
            v = float(self.theta[i])
            if half is None:
                out[name] = Estimate(v, None, None)
            else:
                out[name] = Estimate(v, v - float(half[i]), v + float(half[i]))
        return out

    def estimates(self, level: float = 0.95) -> dict[str, Estimate]:
        """The coefficients (E, A, alpha, ...) with ``level`` confidence intervals.

        A and B are fitted as logarithms, so their intervals are exp of a symmetric interval;
        E is never negative, so its lower end is clipped at 0.
        """
        out = {}
        for name, est in self._raw_estimates(level).items():
            if name.startswith("log_"):
                name = name.removeprefix("log_")
                est = Estimate(
                    math.exp(est.value),
                    None if est.low is None else math.exp(est.low),
                    None if est.high is None else math.exp(est.high),
                )
            elif name == "E" and est.low is not None:
                est = Estimate(est.value, max(0.0, est.low), est.high)
            out[name] = est
        return out

    def to_dict(self, level: float = 0.95) -> dict[str, Any]:
        """JSON-ready summary: form, coefficients with intervals, residual and data."""
        return {
            "form": self.form,  # type: ignore[attr-defined]
            "level": level,
            "dof": self.dof,
            "residual_std_log": self.residual_std,
            "note": self.note,
            "estimates": {
                k: {"value": e.value, "low": e.low, "high": e.high}
                for k, e in self.estimates(level).items()
            },
            "covariance": None if self.cov is None else self.cov.tolist(),
            "parameter_order": list(self.names),
        }


@dataclass
class PowerLawFit(_LogFit):
    """L(N) = E + A·N^-alpha (or A·N^-alpha when ``irreducible`` is False)."""

    irreducible: bool = True

    @property
    def form(self) -> str:
        return "E + A*N^-alpha" if self.irreducible else "A*N^-alpha"

    def _log_f(self, theta, x):
        if not self.irreducible:
            return theta[0] - theta[1] * x
        return np.log(theta[0] + np.exp(theta[1] - theta[2] * x))

    def _grad(self, theta, x):
        if not self.irreducible:
            return np.stack([np.ones_like(x), -x], axis=-1)
        p = np.exp(theta[1] - theta[2] * x)
        f = theta[0] + p
        return np.stack([1 / f, p / f, -x * p / f], axis=-1)

    def predict(self, n: Any) -> np.ndarray:
        """Fitted loss at parameter count(s) ``n``."""
        return self._predict(n)

    def interval(self, n: Any, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
        """``level`` confidence interval of the fitted curve at ``n`` (NaN for an exact fit).

        This is the uncertainty of the law itself (where the mean loss lies), not of one more
        training run, which also carries the seed-to-seed noise.
        """
        return self._interval(level, n)


@dataclass
class ChinchillaFit(_LogFit):
    """L(N, D) = E + A/N^alpha + B/D^beta."""

    @property
    def form(self) -> str:
        return "E + A/N^alpha + B/D^beta"

    def _log_f(self, theta, x, z):
        return np.log(theta[0] + np.exp(theta[1] - theta[2] * x) + np.exp(theta[3] - theta[4] * z))

    def _grad(self, theta, x, z):
        p, q = np.exp(theta[1] - theta[2] * x), np.exp(theta[3] - theta[4] * z)
        f = theta[0] + p + q
        return np.stack([1 / f, p / f, -x * p / f, q / f, -z * q / f], axis=-1)

    def predict(self, n: Any, d: Any) -> np.ndarray:
        """Fitted loss at parameter count(s) ``n`` and data seen ``d``."""
        return self._predict(n, d)

    def interval(self, n: Any, d: Any, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
        """``level`` confidence interval of the fitted surface at (``n``, ``d``)."""
        return self._interval(level, n, d)


def _positive(values: Any, what: str) -> np.ndarray:
    try:
        arr = np.asarray(values, dtype=float)
    except (TypeError, ValueError):
        raise ConfigError(f"{what} must be numbers, got {values!r}") from None
    if not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        bad = arr[~(np.isfinite(arr) & (arr > 0))][0] if arr.size else None
        raise ConfigError(f"{what} must be positive and finite, got {bad}")
    return arr


def _inputs(what: dict[str, Any]) -> list[np.ndarray]:
    arrays = [_positive(v, k).ravel() for k, v in what.items()]
    if len({a.size for a in arrays}) != 1:
        sizes = ", ".join(f"{k}: {a.size}" for k, a in zip(what, arrays))
        raise ConfigError(f"the inputs of a scaling fit must have the same length ({sizes})")
    return arrays


def _refine(log_f, grad, theta0, bounds, y, inputs, names, cls, **extra) -> _LogFit:
    """Least squares on log L from ``theta0``; covariance s²(JᵀJ)⁻¹ when dof > 0."""
    logy = np.log(y)

    def resid(t):
        return logy - log_f(t, *inputs)

    def jac(t):
        return -grad(t, *inputs)

    lo, hi = bounds
    theta0 = np.clip(theta0, lo, hi)
    res = optimize.least_squares(resid, theta0, jac=jac, bounds=bounds, x_scale="jac", method="trf")
    dof = y.size - theta0.size
    cov = None
    if dof > 0:
        s2 = float(np.sum(res.fun**2)) / dof
        cov = s2 * np.linalg.pinv(res.jac.T @ res.jac)
    return cls(theta=res.x, cov=cov, dof=dof, inputs=tuple(inputs), loss=y, names=names, **extra)


def _best_start(columns_for, y, grid) -> tuple[tuple[float, ...], np.ndarray] | None:
    """Over the exponent ``grid``, solve E, A (, B) >= 0 exactly; the best log-space start."""
    best, best_sse = None, math.inf
    for exps in grid:
        cols = columns_for(*exps)
        coef, _ = optimize.nnls(cols, y)
        if np.any(coef[1:] <= 0):
            continue  # a vanishing term: its log-amplitude has no finite start
        fit = cols @ coef
        sse = float(np.sum((np.log(y) - np.log(fit)) ** 2))
        if sse < best_sse:
            best, best_sse = (exps, coef), sse
    return best


def fit_power_law(n: Any, loss: Any, *, irreducible: bool | None = None) -> PowerLawFit:
    """Fit L(N) = E + A·N^-alpha to losses ``loss`` at parameter counts ``n``.

    Args:
        n: parameter counts (positive), one per point; repeated sizes are fine.
        loss: the final losses (positive), same length.
        irreducible: fit the constant E. None (default): only with at least 4 distinct sizes;
            with fewer, L = A·N^-alpha is fitted and ``fit.note`` says so.

    Raises:
        ConfigError: fewer than 2 distinct sizes, or values that are not positive and finite.
    """
    x_raw, y = _inputs({"parameter counts": n, "losses": loss})
    distinct = np.unique(x_raw).size
    if distinct < 2:
        raise ConfigError("a power law needs at least 2 distinct sizes to fit")
    note = ""
    if irreducible is None:
        irreducible = distinct >= 4
        if not irreducible:
            note = (
                f"{distinct} sizes: fitted the 2-parameter L = A*N^-alpha (the irreducible "
                "loss E needs at least 4 sizes)"
            )
    elif irreducible and distinct < 3:
        raise ConfigError("fitting E + A*N^-alpha needs at least 3 distinct sizes")
    x = np.log(x_raw)
    if not irreducible:
        slope, intercept = np.polyfit(x, np.log(y), 1)  # exact: the model is linear in log space
        proto = PowerLawFit(np.zeros(2), None, 0, (x,), y, irreducible=False)
        return _refine(
            proto._log_f, proto._grad, np.array([intercept, -slope]),
            ([-np.inf, -_MAX_EXPONENT], [np.inf, _MAX_EXPONENT]),
            y, [x], ("log_A", "alpha"), PowerLawFit, note=note, irreducible=False,
        )  # fmt: skip
    start = _best_start(
        lambda a: np.stack([np.ones_like(x), np.exp(-a * x)], axis=1),
        y,
        [(a,) for a in _EXPONENT_GRID],
    )
    if start is None:  # the losses grow with N: no decaying term fits; start from a flat law
        (alpha,), (e, amp) = (0.1,), (0.5 * float(y.min()), 0.5 * float(y.min()))
    else:
        (alpha,), (e, amp) = start
    proto = PowerLawFit(np.zeros(3), None, 0, (x,), y)
    return _refine(
        proto._log_f, proto._grad, np.array([e, math.log(amp), alpha]),
        ([0.0, -np.inf, 0.0], [np.inf, np.inf, _MAX_EXPONENT]),
        y, [x], ("E", "log_A", "alpha"), PowerLawFit, note=note,
    )  # fmt: skip


def fit_chinchilla(n: Any, d: Any, loss: Any) -> ChinchillaFit:
    """Fit L(N, D) = E + A/N^alpha + B/D^beta to losses at parameter counts ``n`` and data
    seen ``d`` (tokens for a language model, examples otherwise).

    Needs at least 5 points with at least 2 distinct N and 2 distinct D; with exactly 5 the
    fit is exact and has no confidence intervals (6 or more give them).

    Raises:
        ConfigError: too few points or values that are not positive and finite.
    """
    n_raw, d_raw, y = _inputs({"parameter counts": n, "data sizes": d, "losses": loss})
    if y.size < 5:
        raise ConfigError(
            f"the Chinchilla form has 5 coefficients: it needs >= 5 points, got {y.size}"
        )
    if np.unique(n_raw).size < 2 or np.unique(d_raw).size < 2:
        raise ConfigError("the Chinchilla form needs at least 2 distinct N and 2 distinct D")
    x, z = np.log(n_raw), np.log(d_raw)
    coarse = _EXPONENT_GRID[::6]
    start = _best_start(
        lambda a, b: np.stack([np.ones_like(x), np.exp(-a * x), np.exp(-b * z)], axis=1),
        y, [(a, b) for a in coarse for b in coarse],
    )  # fmt: skip
    if start is None:
        third = float(y.min()) / 3
        (alpha, beta), (e, amp_a, amp_b) = (0.3, 0.3), (third, third, third)
    else:
        (alpha, beta), (e, amp_a, amp_b) = start
    proto = ChinchillaFit(np.zeros(5), None, 0, (x, z), y)
    return _refine(
        proto._log_f, proto._grad,
        np.array([e, math.log(amp_a), alpha, math.log(amp_b), beta]),
        ([0.0, -np.inf, 0.0, -np.inf, 0.0], [np.inf, np.inf, _MAX_EXPONENT, np.inf, _MAX_EXPONENT]),
        y, [x, z], ("E", "log_A", "alpha", "log_B", "beta"), ChinchillaFit,
    )  # fmt: skip
