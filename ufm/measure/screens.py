"""The classifier's and the nearest centre's decisions, screened in float32 with rigorous
bounds and decided in float64 only where the screen cannot vouch (docs/theory.md §4)."""

import numpy as np


EPS32 = float(np.finfo(np.float32).eps)  # the float32 screens' rounding unit (2u)
SUBNORMAL32 = float(np.finfo(np.float32).smallest_subnormal)  # 2⁻¹⁴⁹: twice an absolute rounding


CLASS_BLOCK = 2048  # classes scored at a time: a chunk's scores are [rows, 2048], never [rows, K]


def _blocks(K):
    """(first, stop) of each block of CLASS_BLOCK classes."""
    return [(k, min(k + CLASS_BLOCK, K)) for k in range(0, K, CLASS_BLOCK)]


class _Leaders:
    """The float32 screens' running winner, best and runner-up score of each of n rows, fed
    blocks of classes in order (`add`): the winner is argmin's (`lowest`) or argmax's over all
    classes at once (the first of equal scores), the runner-up the best of the rest (the best
    again on a tie). A row with a score that is not finite is never certain: a float32 sum
    that overflowed part-way is ±inf or NaN whatever its true value, and the bound says
    nothing of it (a row whose sum of scores overflows is redone too: it costs a row, not a
    wrong count)."""

    def __init__(self, n, lowest):
        self.rows, self.lowest = np.arange(n), lowest
        self.best = self.second = None
        self.finite = np.ones(n, dtype=bool)

    def add(self, start, scores):
        """Fold in the scores [n, classes] of the classes from `start` on (overwritten)."""
        lowest, rows = self.lowest, self.rows
        win = np.argmin(scores, axis=1) if lowest else np.argmax(scores, axis=1)
        best = scores[rows, win]
        self.finite &= np.isfinite(scores.sum(axis=1))
        scores[rows, win] = np.inf if lowest else -np.inf
        second = scores.min(axis=1) if lowest else scores.max(axis=1)
        if self.best is None:
            self.win, self.best, self.second = win + start, best, second
            return
        ahead = best < self.best if lowest else best > self.best
        keep = np.minimum if lowest else np.maximum
        self.second = keep(keep(self.second, second), np.where(ahead, self.best, best))
        self.best = np.where(ahead, best, self.best)
        self.win = np.where(ahead, win + start, self.win)

    def sure(self, bound):
        """Rows whose winner leads by more than three times the rows' error `bound` (two for
        the two scores, one to spare for float64's own rounding)."""
        return (np.abs(self.second - self.best) > 3.0 * bound) & self.finite


class _Decided:
    """The float64 rules' winner of each of n rows over blocks of classes fed in order (`add`,
    scores only read): np.argmin's (`lowest`) or np.argmax's choice over all classes at once
    (the first of equal scores, a NaN before any number), and `ties`, the rows whose chosen
    score another class attains too (W = 0, coincident class means), where a decision is
    arbitrary."""

    def __init__(self, n, lowest):
        self.rows, self.lowest, self.best = np.arange(n), lowest, None

    def add(self, start, scores):
        win = np.argmin(scores, axis=1) if self.lowest else np.argmax(scores, axis=1)
        best = scores[self.rows, win]
        equal = np.count_nonzero(scores == best[:, None], axis=1)
        if self.best is None:
            self.win, self.best, self.equal = win + start, best, equal
            return
        ahead = ((best < self.best if self.lowest else best > self.best)
                 | (np.isnan(best) & ~np.isnan(self.best)))
        self.equal = np.where(ahead, equal, np.where(best == self.best, self.equal + equal,
                                                     self.equal))
        self.best = np.where(ahead, best, self.best)
        self.win = np.where(ahead, win + start, self.win)

    @property
    def ties(self):
        return int(np.count_nonzero(self.equal > 1))


class Decisions:
    """The nearest-class-centre and classifier decisions of chunks of rows, added to a dict of
    counts: nearest class centre against the labels, and with W the classifier's (with
    and without b; logits W(x − offset) + W·offset + b) against both, with ties.

    Every decision is the float64 rule's, reached by screens: a score computed in float32
    with a rigorous bound on its error decides a row when its winner leads by more than three
    times the bound (two scores, one to spare); the rows it cannot vouch for (and every tie) go
    on to the next, and the last is float64, where ties are counted. Every screen scores the
    classes CLASS_BLOCK at a time, carrying each row's winner and runner-up from block to block
    (`_Leaders`, `_Decided`): the same decisions as whole rows of scores, in chunks whose length
    does not shrink with K (docs/performance.md, "Vocabulary scale").

    Nearest centre, in the span of the means: with V an orthonormal basis of the centred means
    (`span_basis`), ‖x − μ_k‖² = ‖(x − ḡ)⊥‖² + ‖Vx − Vμ_k‖², the first term the same for every
    class; Vx = V(x − μ_y) + Vμ_y comes from the projection Σ_W is gathered from, so the rule
    costs [rows, r] × [r, K] instead of [rows, d] × [d, K] (all relative to the offset: the
    decision does not depend on it, the cancellation does); screened in float32 (`_nearest`),
    then float64 (`nearest`).

    Logits: first in the span of the means (`span_logits`: W = WVᵀV + W⊥, the product in the
    span from the same projection, W⊥'s part bounded — near collapse, NC3, W is close to the
    span and this decides almost every row at r/d of the cost; when a chunk's rows mostly fall
    through, later chunks skip it). Then in float32 from the rows as given (`_screened`;
    float32 features are not converted for it), the bound for a dot product of length d of
    float32-rounded vectors: ≤ 2(d + 2)·eps₃₂·‖x‖‖w‖, Higham's γ_d plus the roundings, with
    ‖x‖ ≤ ‖x − μ_y‖ + ‖μ_y − offset‖ + ‖offset‖; the bias adds eps₃₂ of its size. Below
    float32's normal range every rounding errs by up to 2⁻¹⁵⁰ absolute instead, which every
    bound adds (features of size 1e-22 have products in the subnormal range). Then float64
    (`logits`): the counts are those of float64 throughout."""

    def __init__(self, means, basis=None, W=None, b=None, offset=None):
        eps, tiny = EPS32, SUBNORMAL32
        self.means, self.basis, self.W, self.b = means, basis, W, b
        self.offset = np.zeros(means.shape[1]) if offset is None else offset
        self.centres = means if basis is None else means @ basis.T  # Vμ_k  [K, r]
        self.sq_centres = np.sum(self.centres * self.centres, axis=1)
        self.mean_norms = np.sqrt(np.sum(means * means, axis=1))
        d, r = means.shape[1], self.centres.shape[1]
        with np.errstate(over="ignore"):  # beyond float32: inf, and those rows are redone
            # exact: q·(−2μ_k) is −2(q·μ_k) bit for bit, no pass over the scores
            self.twice32 = (-2.0 * self.centres).astype(np.float32)
            self.sq32 = self.sq_centres.astype(np.float32)
        # the nearest centre's float32 bound (`_nearest`), subnormal terms included
        self.centre_norms = np.sqrt(self.sq_centres)
        self.centre_scale = float(self.centre_norms.max()) * (1.0 + 1e-6)
        self.ncc_gamma = (r + 6) * eps
        self.ncc_const = (eps * self.centre_scale ** 2 + 4.0 * (r + 2) * tiny
                          + 4.0 * np.sqrt(r) * tiny * self.centre_scale)
        self.ncc_tiny = 2.0 * np.sqrt(r) * tiny
        if W is None:
            return
        # the logits' float32 bound on all d coordinates (`_screened`): below float32's normal
        # range each rounding (of x, w, a product, b, the sum with b) errs by 2⁻¹⁵⁰ absolute
        self.shift = W @ self.offset
        with np.errstate(over="ignore"):  # beyond float32: inf, and those rows are redone
            self.W32 = W.astype(np.float32)
            self.b32 = None if b is None else b.astype(np.float32)
        self.w_scale = float(np.linalg.norm(W, axis=1).max())
        self.gamma = 2.0 * (d + 2) * eps
        self.w_const = ((0.0 if b is None else 2.0 * eps * float(np.abs(b).max()))
                        + 2.0 * (d + 2) * tiny)
        self.w_tiny = np.sqrt(d) * tiny  # per unit of ‖x‖ + ‖w‖
        self.offset_norm = float(np.linalg.norm(self.offset))
        self.through_span = basis is not None  # screen in the means' span first (below)
        if self.through_span:
            self._span_classifier(W, b, basis, r)

    def _span_classifier(self, W, b, basis, r):
        """The classifier in the means' span: A = WVᵀ [K, r], so that W(x − offset) = Aq +
        W⊥(x − offset) with q = V(x − offset), and the part of W⊥(x − offset) that differs
        between classes is at most R·‖(x − offset)⊥‖ with R = max_k ‖W⊥_k − mean_j W⊥_j‖ and
        ‖(x − offset)⊥‖ ≤ ‖x − μ_y‖ + ‖μ_y⊥‖ (norms as differences of squares, with a margin
        above their float64 error: no [K, d] array more)."""
        eps, tiny, d = EPS32, SUBNORMAL32, basis.shape[1]
        # the squares' float64 errors, with V·A's and V's own: at most margin·‖A_k‖²
        margin = 4.0 * (np.sqrt(r) + 1.0) * (d + 2) * float(np.finfo(np.float64).eps)

        def outside(A, inside):  # ‖A_k⊥‖ from ‖A_k‖² − ‖VA_k‖², an upper bound
            full = np.sum(A * A, axis=1)
            return np.sqrt(np.maximum(full - np.sum(inside * inside, axis=1), 0.0) + margin * full)

        spanned = W @ basis.T
        w_mean, a_mean = W.mean(axis=0), spanned.mean(axis=0)
        self.residual = max(float(outside(W[k:k + 1024] - w_mean, spanned[k:k + 1024] - a_mean)
                                  .max()) for k in range(0, len(W), 1024))  # no [K, d] copy
        self.perp = outside(self.means, self.centres)
        with np.errstate(over="ignore"):
            self.A32 = spanned.astype(np.float32)
            self.shift32 = self.shift.astype(np.float32)
        constant = float(np.abs(self.shift).max()) + (0.0 if b is None else float(np.abs(b).max()))
        self.span_gamma = (r + 6) * eps * self.w_scale
        self.span_const = (2.0 * eps * constant + 4.0 * (r + 4) * tiny
                           + 2.0 * np.sqrt(r) * tiny * self.w_scale)

    def relative(self, rows):
        """Rows minus the offset, in float64."""
        return np.subtract(rows, self.offset, dtype=np.float64)

    def __call__(self, counts, rows, y, spread, projected=None):
        """Add the decisions of `rows` (as given, float32 or float64) with labels y; `spread`
        [rows] ‖x − μ_y‖ (with the labels' mean norms, a bound on ‖x‖ for the error bounds);
        `projected` [rows, r] the rows' V(x − μ_y) (needed with a basis). Values beyond float32's
        range screen as inf or NaN: those rows are simply decided in float64."""
        with np.errstate(over="ignore", invalid="ignore"):
            ncc, q32 = self._nearest(counts, rows, y, spread, projected)
            if self.W is None:
                return
            norms = spread + self.mean_norms[y] + self.offset_norm
            todo = None  # the rows the span's screen leaves (None: every row)
            if self.through_span:
                plain, full, sure = self._spanned(q32, y, spread)
                todo = np.flatnonzero(~sure)
                if 2 * todo.size > len(y):  # W far from the means' span: the full product
                    self.through_span = False  # from the next chunk on
            if todo is None:
                plain, full, sure = self._screened(rows, norms)
                unsure = np.flatnonzero(~sure)
            elif todo.size:
                plain[todo], full[todo], sure = self._screened(rows[todo], norms[todo])
                unsure = todo[~sure]
            else:
                unsure = todo
        if unsure.size:
            plain[unsure], full[unsure] = self.logits(counts, self.relative(rows[unsure]))
        self._count(counts, plain, full, ncc, y)

    def _nearest(self, counts, rows, y, spread, projected):
        """The nearest centre of each row, screened in float32 like the logits: q = Vx (all
        relative to the offset), scores ‖c_k‖² − 2q·c_k with c_k = Vμ_k, each within
        eps₃₂·((r + 6)·C·Q + C²) of the exact score (C = max‖c_k‖, Q = ‖x − μ_y‖ + 2‖c_y‖ ≥
        ‖q‖ + ‖c_y‖; the product's γ_r·2CQ, 3·eps₃₂·CQ for rounding c_y, V(x − μ_y) and their
        sum, eps₃₂·(C² + 2CQ)/2 for ‖c_k‖² and the last sum; plus the subnormal terms); rows
        whose winner leads by more than three times that are decided, the others (and every
        tie) decided again by `nearest` in float64."""
        if self.basis is None:
            q = self.relative(rows)
            q32 = q.astype(np.float32)
        else:  # V(x − μ_y) and Vμ_y rounded to float32, then added
            q32 = projected.astype(np.float32, order="C")
            q32 += self.centres[y].astype(np.float32)
        leaders = _Leaders(len(y), lowest=True)
        for start, stop in _blocks(len(self.centres)):
            scores = q32 @ self.twice32[start:stop].T
            scores += self.sq32[None, start:stop]
            leaders.add(start, scores)
        Q = (spread + 2.0 * self.centre_norms[y]) * (1.0 + 1e-6)
        sure = leaders.sure(self.ncc_gamma * self.centre_scale * Q + self.ncc_const
                            + self.ncc_tiny * Q)
        ncc, unsure = leaders.win, np.flatnonzero(~sure)
        counts["ncc_correct"] += int(np.count_nonzero(ncc[sure] == y[sure]))
        if unsure.size:
            again = (q[unsure] if self.basis is None
                     else self.centres[y[unsure]] + projected[unsure])
            ncc[unsure] = self.nearest(counts, again, y[unsure])
        return ncc, q32

    def nearest(self, counts, q, y):
        """The nearest centre of rows `q` (in the centres' coordinates), counted, with ties."""
        decided = _Decided(len(y), lowest=True)
        for start, stop in _blocks(len(self.centres)):
            distance = q @ self.centres[start:stop].T  # ‖μ_k‖² − 2q·μ_k: ‖q‖² is common
            distance *= -2.0
            distance += self.sq_centres[None, start:stop]
            decided.add(start, distance)
        counts["ncc_correct"] += int(np.count_nonzero(decided.win == y))
        counts["ncc_ties"] += decided.ties
        return decided.win

    def span_logits(self, q32, y, spread):
        """(logits [rows, K] without b, their error bound [rows]) in the means' span: Aq +
        W·offset in float32, [rows, r] × [r, K] instead of [rows, d] × [d, K]. Each is within
        the bound of the exact logit less a term the same for every class (w̄⊥·(x − offset)):
        the product and roundings as `_nearest`'s with ‖a_k‖ ≤ ‖w_k‖, the constants'
        roundings, and R·(‖x − μ_y‖ + ‖μ_y⊥‖) for the rest of the part outside the span."""
        return self._span_block(q32, 0, len(self.W)), self._span_bound(y, spread)

    def _span_block(self, q32, start, stop):
        logits = q32 @ self.A32[start:stop].T
        logits += self.shift32[None, start:stop]
        return logits

    def _span_bound(self, y, spread):
        Q = (spread + 2.0 * self.centre_norms[y]) * (1.0 + 1e-6)
        return (self.span_gamma * Q + self.span_const + self.ncc_tiny * Q
                + self.residual * (spread + self.perp[y]) * (1.0 + 1e-6))

    def _spanned(self, q32, y, spread):
        """(argmax without b, with b, which rows are certain) from the logits in the means'
        span (`span_logits`): near collapse (W close to the span, NC3) they decide almost
        every row."""
        return self._two_screens(lambda start, stop: self._span_block(q32, start, stop),
                                 len(y), self._span_bound(y, spread))

    def _screened(self, rows, norms):
        """(argmax without b, with b, which rows the float32 bound vouches for)."""
        rows32 = rows.astype(np.float32, copy=False)
        bound = (self.gamma * norms * (1.0 + 1e-6) * self.w_scale + self.w_const
                 + self.w_tiny * (norms + self.w_scale))
        return self._two_screens(lambda start, stop: rows32 @ self.W32[start:stop].T,
                                 len(rows), bound)

    def _two_screens(self, block, n, bound):
        """(argmax without b, with b, rows certain for both) of the float32 logits of n rows,
        within `bound`, that block(start, stop) gives class block by class block."""
        plain = _Leaders(n, lowest=False)
        full = None if self.b32 is None else _Leaders(n, lowest=False)
        for start, stop in _blocks(len(self.W)):
            logits = block(start, stop)
            if full is not None:
                full.add(start, logits + self.b32[None, start:stop])
            plain.add(start, logits)
        sure = plain.sure(bound)
        if full is None:
            return plain.win, plain.win, sure
        return plain.win, full.win, sure & full.sure(bound)

    def logits(self, counts, block):
        """(argmax without b, with b) of rows minus the offset (`block`) in float64: logits
        W(x − offset) + W·offset + b, their ties counted."""
        plain = _Decided(len(block), lowest=False)
        full = plain if self.b is None else _Decided(len(block), lowest=False)
        for start, stop in _blocks(len(self.W)):
            logits = block @ self.W[start:stop].T
            logits += self.shift[None, start:stop]
            plain.add(start, logits)
            if self.b is not None:
                logits += self.b[None, start:stop]
                full.add(start, logits)
        counts["ties_nobias"] += plain.ties
        counts["ties"] += full.ties
        return plain.win, full.win

    @staticmethod
    def _count(counts, plain, full, ncc, y):
        counts["mismatch"] += int(np.count_nonzero(full != ncc))
        counts["mismatch_nobias"] += int(np.count_nonzero(plain != ncc))
        counts["correct"] += int(np.count_nonzero(full == y))

    def exact(self, counts, rows, y):
        """Every decision of rows in float64 by the plain rules (the nearest centre in all d
        coordinates): what the screened and projected decisions must equal."""
        block = self.relative(rows)
        ncc = Decisions(self.means, None).nearest(counts, block, y)
        if self.W is not None:
            plain, full = self.logits(counts, block)
            self._count(counts, plain, full, ncc, y)
