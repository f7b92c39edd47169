"""Measures over pairs of classes (CDNV, hyperspherical, ETF/OF errors, cosines) from tiles of
Gram rows within a memory budget, for any K."""

import math

import numpy as np

from ufm.measure.passes import BUDGET_BYTES, _in_order, _per_worker, tile_rows


def _svd(A):
    """(s, Vt) of A [K, d] (thin): the singular values and right singular vectors. A tall A
    (K > d) is factored through its triangle R [d, d] (A = QR: the same s and Vt, both
    factorisations backward stable), so neither U [K, d] nor an SVD workspace of A's size is
    ever held — at K = 128,256, d = 4,096 each is 4 GB (docs/performance.md)."""
    if A.shape[0] > A.shape[1]:
        A = np.linalg.qr(A, mode="r")
    _, s, Vt = np.linalg.svd(A, full_matrices=False)
    return s, Vt


class Moments:
    """Count, mean and sum of squared deviations of values seen a part at a time, merged by
    Chan, Golub & LeVeque's rule: stable when the spread is tiny next to the mean (E[x²] − E[x]²
    would cancel, e.g. the cosines of collapsed means)."""

    def __init__(self):
        self.n, self.mean, self.m2 = 0, 0.0, 0.0

    def add(self, values):
        n = values.size
        if n == 0:
            return
        mean = float(np.mean(values))
        centred = (values - mean).ravel()
        self.merge(n, mean, float(np.dot(centred, centred)))

    def merge(self, n, mean, m2):
        """Merge the moments (count, mean, centred sum of squares) of more values."""
        if n == 0:
            return
        total = self.n + n
        delta = mean - self.mean
        self.mean += delta * n / total
        self.m2 += m2 + delta * delta * self.n * n / total
        self.n = total

    def var(self, ddof=0, repeat=1):
        """The variance, each value counted `repeat` times (pairs as ordered pairs: 2)."""
        return repeat * self.m2 / (repeat * self.n - ddof)


def _sum_squares(a):
    flat = a.ravel()
    return float(np.dot(flat, flat))


def _parts(tile, i0):
    """The strictly upper pairs (i < j) of a tile of rows i0..i0+T against columns i0..K, as
    (values, i, j): the square's strict upper triangle (flat, with index arrays) and the
    rectangle right of it (2-D, with broadcastable index columns/rows): the class vectors
    a[i], a[j] broadcast against the values in both."""
    T, width = tile.shape
    r, c = np.triu_indices(T, 1)
    yield tile[r, c], i0 + r, i0 + c
    if width > T:
        yield (tile[:, T:], np.arange(i0, i0 + T)[:, None],
               np.arange(i0 + T, i0 + width)[None, :])


def _explicit_sq_distances(A, rows, cols, budget_bytes):
    """‖A_i − A_j‖² of the given pairs by subtraction (exact where the Gram expansion
    ‖a‖² + ‖b‖² − 2a·b cancels), a budget's worth of pairs at a time."""
    step = max(1, int((BUDGET_BYTES if budget_bytes is None else budget_bytes)
                      // (16 * A.shape[1])))
    out = np.empty(len(rows))
    for s in range(0, len(rows), step):
        diff = A[rows[s:s + step]] - A[cols[s:s + step]]
        out[s:s + step] = np.einsum("ij,ij->i", diff, diff)
    return out


CLOSE = 1e-2  # a Gram-expanded ‖a − b‖² below CLOSE·(‖a‖² + ‖b‖²) is recomputed by subtraction


def _sq_distances(A, sq, gram, i, j, budget_bytes):
    """‖A_i − A_j‖² for a part of a Gram tile (`_parts`) by ‖a_i‖² + ‖a_j‖² − 2 a_i·a_j, the
    pairs close enough for that to cancel recomputed by subtraction."""
    both = sq[i] + sq[j]
    dist2 = gram * -2.0
    dist2 += both
    close = dist2 < CLOSE * both
    if close.any():
        rows, cols = np.broadcast_to(i, dist2.shape)[close], np.broadcast_to(j, dist2.shape)[close]
        dist2[close] = _explicit_sq_distances(A, rows, cols, budget_bytes)
    return dist2


def _unit_sq_distances(U, cos, i, j, budget_bytes):
    """‖u_i − u_j‖² = 2 − 2cos of unit rows from their cosines (`_sq_distances` with ‖u‖ = 1:
    pairs with cos > 1 − CLOSE recomputed by subtraction); `cos` is overwritten."""
    close = cos > 1.0 - CLOSE
    dist2 = cos
    dist2 *= -2.0
    dist2 += 2.0
    if close.any():
        rows, cols = np.broadcast_to(i, dist2.shape)[close], np.broadcast_to(j, dist2.shape)[close]
        dist2[close] = _explicit_sq_distances(U, rows, cols, budget_bytes)
    return dist2


def _norm_of_product(A, s, Vt):
    """‖A Bᵀ‖_F for B = U diag(s) Vt (thin SVD): ‖A Vtᵀ diag(s)‖_F — no [K, K] product."""
    return float(np.linalg.norm((A @ Vt.T) * s[None, :]))


def _frame_ideal(K, kind):
    """(diagonal, off-diagonal) of the unit-norm ideal: the simplex ETF (I − 11ᵀ/K)/√(K−1) or
    the orthogonal frame I/√K."""
    if kind == "etf":
        return (1.0 - 1.0 / K) / math.sqrt(K - 1), -1.0 / (K * math.sqrt(K - 1))
    return 1.0 / math.sqrt(K), 0.0


class _Frame:
    """‖G/‖G‖ − ideal‖_F accumulated over tiles of G, its norm known in advance (from singular
    values): one pass, each term (G_ij/‖G‖ − ideal_ij)² computed as a difference — no
    2 − 2⟨G, ideal⟩/‖G‖ cancellation near the ideal."""

    def __init__(self, K, kind, norm, diag=None, off=None):
        self.diag, self.off = (diag, off) if kind == "" else _frame_ideal(K, kind)
        self.norm, self.total = norm, 0.0

    def add_symmetric(self, tile, i0):
        """A tile of rows i0.. against columns i0.. of a symmetric G: its diagonal, and twice
        its strictly upper part (which stands for the lower one). Each term as
        (G_ij − ideal_ij·‖G‖)²/‖G‖²: one subtraction pass and one dot product."""
        if self.norm > 0:
            T = tile.shape[0]
            scale = self.norm ** 2
            self.total += _sum_squares(np.diagonal(tile[:, :T]) - self.diag * self.norm) / scale
            for values, _, _ in _parts(tile, i0):
                self.total += 2 * _sum_squares(values - self.off * self.norm) / scale

    def add(self, tile, i0):
        """A tile of rows i0.. against every column."""
        if self.norm > 0:
            R = tile - self.off * self.norm
            T = tile.shape[0]
            R[np.arange(T), i0 + np.arange(T)] += (self.off - self.diag) * self.norm
            self.total += _sum_squares(R) / self.norm ** 2

    def value(self):
        return math.sqrt(self.total) if self.norm > 0 else math.nan


def _cosine_stats(gram, i, j, inverse_norms, K, moments):
    """Add a part's cosines to `moments`; return Σ|cos + 1/(K−1)| and the cosines."""
    cos = gram * inverse_norms[i]
    cos *= inverse_norms[j]
    moments.add(cos)
    return float(np.sum(np.abs(cos + 1.0 / (K - 1)))), cos


def pair_measures(M, g, W=None, std="population", budget_bytes=None, svd_M=None, svd_mu=None,
                  within=None):
    """The measures over pairs of classes and the frame distances (docs/theory.md §4), from
    tiles of rows of the K×K Grams: nothing [K, K] (or [K·(K−1)/2, d]) is held, and the tiles
    fit in the budget. M [K, d] centred means, g [d] the global mean (raw means μ = M + g),
    W [K, d] the classifier, `within` [K] the classes' mean squared distances to their means.
    Returns (values, undefined)."""
    K, d = M.shape
    s_M, Vt_M = svd_M if svd_M is not None else _svd(M)
    s_mu, Vt_mu = svd_mu if svd_mu is not None else _svd(M + g)
    norms = np.linalg.norm(M, axis=1)
    sq = norms ** 2
    inverse = 1.0 / np.where(norms > 0, norms, 1.0)
    Mg, gg = M @ g, float(g @ g)
    frames = {"nc2_etf_H": _Frame(K, "etf", float(np.sqrt(np.sum(s_M ** 4)))),
              "nc2_of_H": _Frame(K, "of", float(np.sqrt(np.sum(s_mu ** 4))))}
    has_direction = bool(np.all(norms > 0))
    if W is not None:
        s_W = _svd(W)[0]
        frames.update({
            "nc2_etf_W": _Frame(K, "etf", float(np.sqrt(np.sum(s_W ** 4)))),
            "nc2_of_W": _Frame(K, "of", float(np.sqrt(np.sum(s_W ** 4)))),
            "nc3_etf": _Frame(K, "etf", _norm_of_product(W, s_M, Vt_M)),
            "nc3_of": _Frame(K, "of", _norm_of_product(W, s_mu, Vt_mu))})
        w_norms = np.linalg.norm(W, axis=1)
        w_inverse = 1.0 / np.where(w_norms > 0, w_norms, 1.0)
        Wg = W @ g
    unit = M * inverse[:, None]
    share = _per_worker(budget_bytes)  # tiles in flight, one per core

    def tile(i0, i1):
        """One tile's partial sums: fresh frames, moments and sums, merged below in order."""
        part = {name: _Frame(K, "", frame.norm, frame.diag, frame.off)
                for name, frame in frames.items()}
        moments = {key: Moments() for key in ("cos_H", "hyper", "hyper_log", "cos_W")}
        sums = dict(angle_H=0.0, angle_W=0.0, cdnv=0.0, coincide=False, same_direction=False)
        C = M[i0:i1] @ M[i0:].T  # centred Gram, rows i0:i1, columns i0..
        part["nc2_etf_H"].add_symmetric(C, i0)
        part["nc2_of_H"].add_symmetric(C + Mg[i0:i1, None] + Mg[None, i0:] + gg, i0)
        for gram, i, j in _parts(C, i0):
            dist2 = _sq_distances(M, sq, gram, i, j, share)
            sums["coincide"] = sums["coincide"] or not np.all(dist2 > 0)
            if not sums["coincide"]:
                sums["cdnv"] += float(np.sum((within[i] + within[j]) / (2.0 * dist2)))
            if has_direction:
                angle, cos = _cosine_stats(gram, i, j, inverse, K, moments["cos_H"])
                sums["angle_H"] += angle
                dist = np.sqrt(_unit_sq_distances(unit, cos, i, j, share))
                moments["hyper"].add(dist)
                if np.all(dist > 0):
                    moments["hyper_log"].add(np.log(dist))  # the variance of log(1/dist)
                else:
                    sums["same_direction"] = True
        if W is not None:
            WW = W[i0:i1] @ W[i0:].T
            part["nc2_etf_W"].add_symmetric(WW, i0)
            part["nc2_of_W"].add_symmetric(WW, i0)
            WM = W[i0:i1] @ M.T  # every column: W Mᵀ is not symmetric
            part["nc3_etf"].add(WM, i0)
            WM += Wg[i0:i1, None]  # W μᵀ
            part["nc3_of"].add(WM, i0)
            if np.all(w_norms > 0):
                for gram, i, j in _parts(WW, i0):
                    sums["angle_W"] += _cosine_stats(gram, i, j, w_inverse, K,
                                                     moments["cos_W"])[0]
        return part, moments, sums

    T = tile_rows(K, share)
    tiles = [(i0, min(K, i0 + T)) for i0 in range(0, K, T)]
    cos_H, hyper, hyper_log, cos_W = Moments(), Moments(), Moments(), Moments()
    angle_H = angle_W = cdnv = 0.0
    coincide = same_direction = False
    for part, moments, sums in _in_order(tile, tiles):  # in tile order: deterministic
        for name, frame in part.items():
            frames[name].total += frame.total
        for mine, theirs in ((cos_H, "cos_H"), (hyper, "hyper"), (hyper_log, "hyper_log"),
                             (cos_W, "cos_W")):
            mine.merge(moments[theirs].n, moments[theirs].mean, moments[theirs].m2)
        angle_H, angle_W = angle_H + sums["angle_H"], angle_W + sums["angle_W"]
        coincide = coincide or sums["coincide"]
        same_direction = same_direction or sums["same_direction"]
        cdnv += sums["cdnv"]
    pairs = K * (K - 1) // 2
    ddof = 1 if std == "unbiased" else 0
    out = {name: frame.value() for name, frame in frames.items()}
    undefined = {}
    out["nc1_cdnv"] = math.nan if coincide else cdnv / pairs
    if coincide:
        undefined["nc1_cdnv"] = "two class means coincide"
    if has_direction:
        out["equiangularity_H"] = math.sqrt(cos_H.var(ddof, repeat=2))
        out["max_angle_H"] = angle_H / pairs
        out["hyperspherical_distance"] = hyper.var()
        out["hyperspherical_log"] = math.nan if same_direction else hyper_log.var()
        if same_direction:
            undefined["hyperspherical_log"] = ("two centred class means point the same way "
                                               "(a distance of 0 has no logarithm)")
    else:
        for key in ("equiangularity_H", "max_angle_H", "hyperspherical_distance",
                    "hyperspherical_log"):
            out[key] = math.nan
            undefined[key] = "a centred class mean is zero (no direction)"
    if W is not None:
        if np.all(w_norms > 0):
            out["equiangularity_W"] = math.sqrt(cos_W.var(ddof, repeat=2))
            out["max_angle_W"] = angle_W / pairs
        else:
            out["equiangularity_W"] = out["max_angle_W"] = math.nan
            undefined["equiangularity_W"] = undefined["max_angle_W"] = "a classifier row is zero"
    return out, undefined
