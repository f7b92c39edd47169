"""Figure `unregularized_bias` — Theorem 3.2: with an unregularized bias the UFM collapses to a
simplex ETF (NC2-ETF → 0 while NC2-OF does not) and b → 1/K."""

from experiments import common
from experiments.theorem_figure import script

FULL = dict(K=4, d=20, n=50, lam_W=5e-3, lam_H=5e-3, lr=0.1, init_scale=1.0, steps=100000,
            log_every=1000)
SMOKE = dict(FULL, K=3, d=5, n=4, steps=200, log_every=50)


def bias_panel(ax, arrays, meta):
    K = meta["config"]["K"]
    common.log_curves(ax, arrays["step"], {
        "|mean(b) − 1/K|": arrays["h_b_mean"] - 1.0 / K,
        "max(b) − min(b)": arrays["h_b_spread"]}, f"bias → 1/K = {1 / K:g}")
    ax.text(0.5, 0.9, f"final mean(b) = {arrays['h_b_mean'][-1]:.10f}", transform=ax.transAxes,
            ha="center", fontsize=8)


main, plot = script(
    "unregularized_bias", "unregularized-bias", FULL, SMOKE, doc=__doc__, extra_panel=bias_panel,
    title=lambda m: f"Theorem 3.2: unregularized-bias UFM → simplex ETF (c = {m['theory']['c']:.3g} < 1); "
                    f"NC2-ETF → 0 while NC2-OF stays, b → 1/K")

if __name__ == "__main__":
    main()
