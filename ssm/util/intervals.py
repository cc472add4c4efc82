"""Confidence intervals over seeds (or tasks): mean ± Student-t half-width.

With ``n`` finite values ``x``, the interval is ``mean(x) ± t_{(1+level)/2, n-1} · sd(x) / √n``
(``sd`` with ``ddof=1``). The Student-t quantile is computed here, from the regularised incomplete
beta function, so nothing beyond the standard library and numpy is imported (no scipy).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from functools import lru_cache
from typing import Any

import numpy as np

__all__ = ["STATISTIC", "mean_ci", "student_t_cdf", "student_t_quantile"]

STATISTIC = "student-t"
"""The value of the ``statistic`` field of every interval :func:`mean_ci` returns."""


def _betacf(a: float, b: float, x: float) -> float:
    """The continued fraction of the incomplete beta function (modified Lentz; Numerical Recipes,
    3rd ed., §6.4), converging fast for ``x < (a + 1) / (a + b + 2)``."""
    tiny, eps = 1e-300, 1e-16
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 10_000):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < eps:
            return h
    raise ArithmeticError(f"incomplete beta continued fraction did not converge (a={a}, b={b})")


def _betainc(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function ``I_x(a, b)``."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = (
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    front = math.exp(log_front)
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def student_t_cdf(t: float, df: float) -> float:
    """``P(T <= t)`` for Student's t with ``df`` degrees of freedom:
    ``1 - I_{df/(df+t²)}(df/2, 1/2) / 2`` for ``t >= 0``, and by symmetry below."""
    if not df > 0:
        raise ValueError(f"degrees of freedom must be > 0, got {df!r}")
    tail = 0.5 * _betainc(0.5 * df, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


@lru_cache(maxsize=1024)
def student_t_quantile(p: float, df: float) -> float:
    """The ``p`` quantile of Student's t with ``df`` degrees of freedom (``scipy.stats.t.ppf``).

    Bisection for ``t >= 0`` on whichever form keeps full precision: near the centre the central
    mass ``P(|T| <= t) = I_{t²/(df+t²)}(1/2, df/2) = 2p - 1``, in the tail the upper tail
    ``P(T > t) = I_{df/(df+t²)}(df/2, 1/2) / 2 = 1 - p`` (so neither side subtracts from 1).
    """
    if not 0.0 < p < 1.0:
        raise ValueError(f"quantile level must be in (0, 1), got {p!r}")
    if not df > 0:
        raise ValueError(f"degrees of freedom must be > 0, got {df!r}")
    if p == 0.5:
        return 0.0
    if p < 0.5:
        return -student_t_quantile(1.0 - p, df)
    if p < 0.75:  # p - 0.5 and 1 - p are exact in floating point here (Sterbenz)
        target = 2.0 * (p - 0.5)

        def below(t: float) -> bool:  # is t below the quantile?
            return _betainc(0.5, 0.5 * df, t * t / (df + t * t)) < target
    else:
        target = 2.0 * (1.0 - p)

        def below(t: float) -> bool:
            return _betainc(0.5 * df, 0.5, df / (df + t * t)) > target

    hi = 1.0
    while below(hi):
        hi *= 2.0
    lo = hi / 2.0 if hi > 1.0 else 0.0
    for _ in range(2000):
        mid = 0.5 * (lo + hi)
        if below(mid):
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-15 * hi:
            break
    return 0.5 * (lo + hi)


def mean_ci(values: Iterable[float | None], level: float = 0.95) -> dict[str, Any]:
    """The mean of ``values`` and the half-width of its Student-t ``level`` confidence interval.

    ``values`` is a flat iterable or an array of any shape (flattened). ``None`` and non-finite
    values are dropped; ``n`` counts the values used. Returns
    ``{"mean", "ci95", "n", "statistic"}``, the half-width under a key named for the level
    (``ci95`` at 0.95, ``ci90`` at 0.9, ``ci99.9`` at 0.999). The half-width is NaN for fewer
    than two values, and the mean NaN for none.
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"confidence level must be in (0, 1), got {level!r}")
    key = f"ci{100 * level:.10g}"
    if isinstance(values, np.ndarray):
        values = values.ravel().tolist()
    finite = [float(v) for v in values if v is not None and math.isfinite(v)]
    x = np.asarray(finite, dtype=np.float64)
    mean = float(x.mean()) if x.size else math.nan
    half = math.nan
    if x.size > 1:
        t = student_t_quantile(0.5 * (1.0 + level), x.size - 1)
        half = float(t * x.std(ddof=1) / math.sqrt(x.size))
    return {"mean": mean, key: half, "n": int(x.size), "statistic": STATISTIC}
