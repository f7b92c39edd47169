"""Figure `bias_free` — Theorem 3.1: the bias-free UFM collapses to an orthogonal frame."""
from experiments.theorem_figure import script

FULL = dict(K=4, d=20, n=50, lam_W=5e-3, lam_H=5e-3, lr=0.1, init_scale=1.0, steps=100000,
            log_every=1000)
SMOKE = dict(FULL, K=3, d=5, n=4, steps=200, log_every=50)

main, plot = script(
    "bias_free", "bias-free", FULL, SMOKE, doc=__doc__,
    title=lambda m: f"Theorem 3.1: bias-free UFM → orthogonal frame (c = {m['theory']['c']:.3g} < 1); "
                    f"NC2-OF and NC3-OF → 0, W's NC2-ETF does not")

if __name__ == "__main__":
    main()
