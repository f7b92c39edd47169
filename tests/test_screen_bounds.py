"""The float32 screens' error bounds (ufm/measure/screens.py) against rigorous bounds computed here
independently, from the very arrays each screen multiplies: Higham's γ_n·Σ|x̂_i||ŵ_i| for a float32
dot product of length n (any summation order, with or without FMA), plus the roundings of its
inputs to float32 and of the last addition, element by element — not the Cauchy–Schwarz form the
module uses. A screen's bound below this one can decide a row wrongly (an adversarial near-tie
sits inside the gap), whether or not a random test happens to meet such a row; so each screen's
per-row bound must dominate the rigorous one for every class, at every size, scale and offset
(docs/testing.md, "Mutation testing": the bounds that mutation testing made smaller)."""
import numpy as np
import pytest

from ufm import measure
from ufm.measure import screens

U = 2.0 ** -24  # float32's unit roundoff (eps₃₂ = 2u)
ETA = 2.0 ** -150  # float32's absolute rounding error below its normal range (gradual underflow)
SLACK = 1 + 1e-9  # the float64 arithmetic of the reference bounds themselves


def gamma(n):
    return n * U / (1 - n * U)


def dot_bound(x, x32, w, w32):
    """[rows, K]: |fl32(x̂·ŵ_k) − x·w_k| ≤ γ_n Σ|x̂||ŵ| + n·η + Σ|x̂ − x||ŵ| + Σ|x||ŵ − w| (n·η:
    each of the n products may fall below float32's normal range and err by η absolute)."""
    x32, w32 = x32.astype(np.float64), w32.astype(np.float64)
    return (gamma(x.shape[1]) * np.abs(x32) @ np.abs(w32).T + x.shape[1] * ETA
            + np.abs(x32 - x) @ np.abs(w32).T + np.abs(x) @ np.abs(w32 - w).T)


def _problem(seed, K, d, scale, offset_size, bias):
    rng = np.random.default_rng(seed)
    means = scale * rng.normal(size=(K, d))
    means[0] = 0.0  # a class mean at the origin, and rows on it: no product term to hide in
    offset = offset_size * rng.normal(size=d)
    W = rng.normal(size=(K, d)) * rng.uniform(0.1, 10.0, size=(K, 1))
    W[0] *= 5.0  # the largest row first: a bound that skipped row 0 would be too small
    b = rng.normal(size=K) * scale if bias else None
    y = rng.integers(0, K, 400)
    noise = scale * rng.normal(size=(400, d)) * rng.uniform(0.0, 3.0, (400, 1))
    y[:20], noise[:20] = 0, 0.0
    return means, offset, W, b, y, means[y] + offset + noise


SETTINGS = [(0, 4, 1, 1.0, 0.0, False), (1, 3, 2, 1e3, 10.0, True), (2, 6, 40, 1.0, 1e4, True),
            (3, 10, 7, 1e-3, 1.0, False), (4, 5, 300, 30.0, 0.0, True),
            # features in float32's subnormal range (1e-41) read by a classifier of size 1–50
            (5, 4, 8, 1e-41, 0.0, True), (6, 3, 12, 1e-41, 1e-41, False), (7, 9, 6, 1e-41, 0.0, False)]


@pytest.mark.parametrize("seed, K, d, scale, offset_size, bias", SETTINGS)
def test_the_full_products_bound_dominates_the_rigorous_one(seed, K, d, scale, offset_size, bias):
    """The classifier's float32 screen on all d coordinates (`_screened`: rows as given times W,
    then + b): per row, its bound ≥ the rigorous error of every class's logit, with and without
    the bias (float64 rows rounded to float32 first, and float32 rows taken as they are)."""
    means, offset, W, b, y, rows = _problem(seed, K, d, scale, offset_size, bias)
    decide = measure.Decisions(means, measure.span_basis(means), W, b, offset)
    D = decide.relative(rows) - means[y]
    norms = np.linalg.norm(D, axis=1) + decide.mean_norms[y] + decide.offset_norm
    for given in (rows, rows.astype(np.float32)):
        x = given.astype(np.float64)
        captured = {}
        decide._two_screens = lambda block, n, bound: captured.update(  # every class at once
            logits=block(0, len(W)), bound=bound)
        decide._screened(given, norms)
        logits = captured["logits"].astype(np.float64)
        need = dot_bound(x, given.astype(np.float32), W, W.astype(np.float32))
        if b is not None:  # + b rounded to float32, and the sum rounded
            b32 = b.astype(np.float32).astype(np.float64)
            need = need + np.abs(b32 - b)[None, :] + U * np.abs(logits + b32[None, :]) + ETA
        assert np.all(captured["bound"] * SLACK >= need.max(axis=1))


@pytest.mark.parametrize("seed, K, d, scale, offset_size, bias", SETTINGS)
def test_the_nearest_centre_bound_dominates_the_rigorous_one(seed, K, d, scale, offset_size,
                                                             bias, monkeypatch):
    """The nearest centre's float32 screen (`_nearest`): scores ‖c_k‖² − 2q·c_k from q rounded to
    float32 (in the means' span: V(x − μ_y) and Vμ_y rounded, then added), each within the
    row's bound of the exact score, for every class."""
    means, offset, W, b, y, rows = _problem(seed, K, d, scale, offset_size, bias)
    basis = measure.span_basis(means)
    decide = measure.Decisions(means, basis, None, None, offset)
    D = decide.relative(rows) - means[y]
    projected = None if basis is None else D @ basis.T
    captured = {"scores": []}

    class Recorded(screens._Leaders):  # the screen's scores (block by block) and its bound
        def add(self, start, scores):
            captured["scores"].append(scores.copy())
            super().add(start, scores)

        def sure(self, bound):
            captured["bound"] = bound
            return super().sure(bound)

    monkeypatch.setattr(screens, "_Leaders", Recorded)
    decide._nearest(measure._no_decisions(), rows, y, np.linalg.norm(D, axis=1), projected)
    captured["scores"] = np.concatenate(captured["scores"], axis=1)
    c = decide.centres
    c32 = c.astype(np.float32).astype(np.float64)  # Vμ_k as the screen rounds it
    if basis is None:
        q = decide.relative(rows)
        q32 = q.astype(np.float32).astype(np.float64)
        rounding_q = np.abs(q32 - q)
    else:
        p32 = projected.astype(np.float32).astype(np.float64)
        q = projected + c[y]
        q32 = (p32.astype(np.float32) + c32[y].astype(np.float32)).astype(np.float64)
        rounding_q = np.abs(p32 - projected) + np.abs(c32[y] - c[y]) + U * np.abs(p32 + c32[y]) + ETA
    t, t32 = -2.0 * c, decide.twice32.astype(np.float64)
    need = (gamma(c.shape[1]) * np.abs(q32) @ np.abs(t32).T + c.shape[1] * ETA
            + rounding_q @ np.abs(t32).T + np.abs(q) @ np.abs(t32 - t).T)
    sq32 = decide.sq32.astype(np.float64)
    need += np.abs(sq32 - decide.sq_centres)[None, :] + U * np.abs(captured["scores"]) + ETA
    assert np.all(captured["bound"] * SLACK >= need.max(axis=1))


@pytest.mark.parametrize("seed, K, d, scale, offset_size, bias",
                         [s for s in SETTINGS if s[1] < s[2]])  # the span is a proper subspace
def test_the_span_screens_bound_dominates_the_rigorous_one(seed, K, d, scale, offset_size, bias):
    """The classifier in the means' span (`span_logits`): Aq + W·offset in float32, A = WVᵀ. The
    part in the span within the rigorous bound of the float32 product; the part outside it bounded
    by R·‖(x − offset)⊥‖, where R (`residual`) must be at least the largest distance of a centred
    classifier row from the span, and ‖μ_y⊥‖ (`perp`) at least each mean's — computed here by
    projecting, every row included."""
    means, offset, W, b, y, rows = _problem(seed, K, d, scale, offset_size, bias)
    basis = measure.span_basis(means)
    decide = measure.Decisions(means, basis, W, b, offset)
    outside = lambda A: np.linalg.norm(A - (A @ basis.T) @ basis, axis=1)
    assert decide.residual * SLACK >= outside(W - W.mean(axis=0)).max()
    assert np.all(decide.perp * SLACK >= outside(means))
    D = decide.relative(rows) - means[y]
    projected = D @ basis.T
    c32 = decide.centres.astype(np.float32)  # Vμ_k as the screens round it
    q32 = projected.astype(np.float32) + c32[y]
    spread = np.linalg.norm(D, axis=1)
    logits, bound = decide.span_logits(q32, y, spread)
    q, q32 = projected + decide.centres[y], q32.astype(np.float64)
    p32 = projected.astype(np.float32).astype(np.float64)
    rounding_q = (np.abs(p32 - projected) + np.abs(c32[y].astype(np.float64) - decide.centres[y])
                  + U * np.abs(p32 + c32[y]) + ETA)
    A = W @ basis.T
    A32 = decide.A32.astype(np.float64)
    need = (gamma(A.shape[1]) * np.abs(q32) @ np.abs(A32).T + A.shape[1] * ETA
            + rounding_q @ np.abs(A32).T + np.abs(q) @ np.abs(A32 - A).T)
    need += (np.abs(decide.shift32.astype(np.float64) - decide.shift)[None, :]
             + U * np.abs(logits.astype(np.float64)) + ETA)
    # the part outside the span: R·‖(x − offset)⊥‖ ≤ R·(‖x − μ_y‖ + ‖μ_y⊥‖)
    need += (outside(W - W.mean(axis=0)).max() * (spread + outside(means)[y]))[:, None]
    assert np.all(bound * SLACK >= need.max(axis=1))
