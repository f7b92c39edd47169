"""Figure `ntp_collapse` — next-token prediction's subspace collapse along the regularisation path
(docs/theory.md §5.6): V = 8 tokens, 7 support sets (a pattern where the centred support matrix Ẑ
is *not* the NTP-SVM's solution), each shared by two contexts with different distributions on it
(N = 14). At every λ = λ_W = λ_H the L-BFGS optimum, certified global by the entropy dual bound;
from it: the in-support logits against log p (the finite part), the probability left outside the
supports, the embeddings of contexts sharing a support turning to one direction, and the centred
logits turning toward the NTP-SVM (`--limit`) — not toward Ẑ — while staying in Ẑ's span."""
import os
import tempfile

import numpy as np

from ufm import limit, runner

from experiments import common

NAME = "ntp_collapse"
SUPPORTS = np.array([[1, 0, 0, 1, 1, 1, 0], [1, 0, 0, 0, 0, 0, 0], [0, 1, 0, 0, 0, 0, 0],
                     [0, 1, 0, 1, 1, 0, 0], [0, 0, 0, 0, 1, 0, 0], [1, 1, 1, 1, 1, 0, 1],
                     [0, 1, 0, 0, 1, 0, 0], [1, 1, 1, 0, 1, 0, 0]], bool)
FULL = dict(lams=np.logspace(-1, -6, 16).tolist(), d=8, steps=20000, seed=0)
SMOKE = dict(FULL, lams=[1e-1, 1e-2, 1e-3])


def targets(seed=0):
    """Each support twice, with two different random distributions on it: P [8, 14]."""
    rng = np.random.default_rng(seed)
    S = np.repeat(SUPPORTS, 2, axis=1)
    P = np.where(S, rng.uniform(0.2, 1.0, size=S.shape), 0.0)
    return P / P.sum(axis=0, keepdims=True), S


def cosine(a, b):
    return float(np.sum(a * b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def main(argv=None):
    args = common.parse_args(NAME, __doc__, argv)
    cfg = SMOKE if args.smoke else FULL
    P, S = targets(cfg["seed"])
    V, N = P.shape
    svm = limit.solve_support_svm(S, tol=1e-12)
    Zsvm = np.asarray(svm.M, np.float64)
    C = np.eye(V) - 1.0 / V
    Zhat = C @ S.astype(np.float64)
    U, sv, _ = np.linalg.svd(Zhat, full_matrices=False)
    span = U[:, sv > 1e-10 * sv[0]]
    keys = ("objective", "lower_bound", "gap", "log_ratio_error", "mass_outside",
            "same_support_cos", "cos_svm", "cos_centred_support", "outside_span")
    rows = {k: [] for k in keys}
    update, close = common.progress(len(cfg["lams"]), args.quiet, NAME)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "P.npy")
        np.save(path, P)
        for i, lam in enumerate(cfg["lams"]):
            r = runner.train("ntp", options=dict(targets=path), K=V, n=(2,) * 6 + (1, 1),
                             d=cfg["d"], optimizer="lbfgs", steps=cfg["steps"], lam_W=lam,
                             lam_H=lam, seed=cfg["seed"])
            Zc = C @ (np.asarray(r.params["W"], np.float64) @ np.asarray(r.params["H"],
                                                                          np.float64))
            for key, value in (("objective", r.final["objective"]),
                               ("lower_bound", r.certificate["lower_bound"]),
                               ("gap", r.certificate["global_gap"] / abs(r.final["objective"])),
                               ("log_ratio_error", r.final["log_ratio_error"]),
                               ("mass_outside", r.final["mass_outside_support"]),
                               ("same_support_cos", r.final["same_support_min_cos"]),
                               ("cos_svm", cosine(Zc, C @ Zsvm)),
                               ("cos_centred_support", cosine(Zc, Zhat)),
                               ("outside_span", float(np.linalg.norm(Zc - span @ (span.T @ Zc))
                                                      / np.linalg.norm(Zc)))):
                rows[key].append(float(value))
            if update:
                update(i + 1)
    close()
    arrays = {k: np.array(v) for k, v in rows.items()}
    info = limit.support_structure(Zsvm, S)
    arrays.update(lams=np.asarray(cfg["lams"]), P=P, supports=S,
                  svm_value=np.float64(svm.value), svm_gap=np.float64(svm.gap),
                  centred_support_value=np.float64(info["centred_support_value"]),
                  svm_outside_span=np.float64(info["outside_support_span"]),
                  centred_support_multiplier=np.float64(limit.centred_support_multiplier(S)))
    return common.finish(args, NAME, arrays, dict(cfg, V=V, N=N), plot)


def plot(out):
    plt = common.pyplot()
    a, cfg = common.load(out, NAME)
    lam = a["lams"]
    fig, axes = plt.subplots(1, 3, figsize=(21, 5.5))
    ax = axes[0]
    ax.loglog(lam, a["log_ratio_error"], "o-", ms=4, label="max |in-support logits − log p| "
                                                           "(centred per context)")
    ax.loglog(lam, a["mass_outside"], "s-", ms=4, label="probability outside the supports (mean)")
    ax.loglog(lam, np.clip(1 - a["same_support_cos"], 1e-17, None), "^-", ms=4,
              label="1 − min cos(embedding, its support group's mean direction)")
    ax.set(title="the finite part settles, shared supports turn to one direction")
    ax = axes[1]
    ax.loglog(lam, np.clip(1 - a["cos_svm"], 1e-17, None), "o-", ms=4,
              label=f"1 − cos(centred Z, NTP-SVM)  (limit ‖Z‖_* = {float(a['svm_value']):.6f}, "
                    f"gap {float(a['svm_gap']):.0e})")
    ax.loglog(lam, np.clip(1 - a["cos_centred_support"], 1e-17, None), "s-", ms=4,
              label=f"1 − cos(centred Z, Ẑ = centred support matrix)  (‖Ẑ‖_* = "
                    f"{float(a['centred_support_value']):.6f})")
    ax.loglog(lam, np.clip(a["outside_span"], 1e-17, None), "^-", ms=4,
              label=f"fraction of centred Z outside span(Ẑ)  (the limit's: "
                    f"{float(a['svm_outside_span']):.0e})")
    ax.set(title="the growing part turns toward the NTP-SVM, not toward Ẑ")
    ax = axes[2]
    ax.loglog(lam, np.clip(a["gap"], 1e-17, None), "o", ms=5, label="relative gap to the "
                                                                      "entropy dual bound")
    ax.axhline(1e-9, color="k", lw=0.8, ls="--", label="certificate tolerance 1e-9")
    ax.set(title="every point certified global")
    for ax in axes:
        ax.set_xlabel("λ = λ_W = λ_H (log)")
        ax.invert_xaxis()
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"Next-token prediction UFM: V = {cfg['V']} tokens, 7 supports × 2 contexts "
                 f"(N = {cfg['N']}), d = {cfg['d']}, L-BFGS float64, certified  [our setting; "
                 f"docs/theory.md §5.6]", fontsize=11)
    common.tight_layout(fig, rect=(0, 0, 1, 0.93))
    return common.save_figure(fig, out, NAME)


if __name__ == "__main__":
    main()
