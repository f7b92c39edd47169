"""Figure `han_decomposition` — Han, Papyan & Donoho's MSE decomposition (docs/theory.md §3.8) along a
regularized-bias UFM run with λ_b = λ_W (their single λ): L_NC1, L_NC2/3 and L_LS⊥ against
iteration. Does L_LS⊥ become negligible, as they found on real networks (the central path)?"""

from experiments import common, theorem_figure

NAME = "han_decomposition"
FULL = dict(K=4, d=20, n=50, lam_W=5e-3, lam_H=5e-3, lam_b=5e-3, lr=0.1, init_scale=1.0,
            steps=60000, log_every=200)
SMOKE = dict(FULL, K=3, d=5, n=4, steps=200, log_every=50)


def main(argv=None):
    args = common.parse_args(NAME, __doc__, argv)
    arrays, config = theorem_figure.run("regularized-bias", SMOKE if args.smoke else FULL, args, NAME)
    return common.finish(args, NAME, arrays, config, plot)


def plot(out):
    plt = common.pyplot()
    a, meta = common.load(out, NAME)
    step = a["step"]
    nc1, nc23, perp = a["h_han_nc1"], a["h_han_nc23"], a["h_han_ls_perp"]
    total = nc1 + nc23 + perp
    fig, axes = plt.subplots(1, 2, figsize=(14, 5))
    common.log_curves(axes[0], step, {"L_NC1": nc1, "L_NC2/3": nc23, "L_LS⊥": perp,
                                      "sum (= MSE + λ/2‖W̃‖²)": total},
                      "the three terms", "loss term (log scale)")
    common.log_curves(axes[1], step, {"L_LS⊥ / sum": perp / total, "L_NC1 / sum": nc1 / total},
                      "shares of the loss", "fraction (log scale)")
    fig.suptitle("Han, Papyan & Donoho's decomposition along a regularized-bias UFM run: L_LS⊥ "
                 "becomes negligible (below 1e-8 of the loss after ~10k steps), so the run ends on "
                 f"the central path\n{theorem_figure.setting_label(meta['config'])}  [our setting]",
                 fontsize=11)
    common.tight_layout(fig, rect=(0, 0, 1, 0.9))
    return common.save_figure(fig, out, NAME)


if __name__ == "__main__":
    main()
