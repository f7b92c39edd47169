"""Figure `linear_extended` — Theorem 4.1: in the linear extended UFM both H1 and H2 = W1H1
collapse to orthogonal frames, W2 aligned with H̄2ᵀ."""
from experiments.theorem_figure import script

FULL = dict(K=4, d=20, n=50, lam_W1=5e-3, lam_W2=5e-3, lam_H1=5e-3, lr=0.1, init_scale=0.1,
            steps=100000, log_every=1000)
SMOKE = dict(FULL, K=3, d=5, n=4, steps=200, log_every=50)

main, plot = script(
    "linear_extended", "linear-extended", FULL, SMOKE, doc=__doc__,
    title=lambda m: f"Theorem 4.1: linear extended UFM (K·a = {m['theory']['Ka']:.3g} < 2^(-4/3)); "
                    f"H1 and H2 = W1H1 both → orthogonal frames")

if __name__ == "__main__":
    main()
