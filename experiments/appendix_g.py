"""Figure `appendix_g` — Figures bias_free, unregularized_bias, linear_extended and relu_extended
again at a second setting (K=6, d=12, n=20, λ_W ≠ λ_H), on one sheet, as the paper's Appendix G."""
from experiments import common, theorem_figure

NAME = "appendix_g"
ROWS = {  # model -> settings (our choice)
    "bias-free": dict(lam_W=1e-2, lam_H=2e-3, init_scale=1.0, steps=100000),
    "unregularized-bias": dict(lam_W=1e-2, lam_H=2e-3, init_scale=1.0, steps=100000),
    "linear-extended": dict(lam_W1=4e-3, lam_W2=1e-2, lam_H1=2e-3, init_scale=0.1, steps=100000),
    # Appendix G's ReLU initialisation: std 0.1, 0.1, 0.2
    "relu-extended": dict(lam_W1=4e-3, lam_W2=1e-2, lam_H1=2e-3, steps=150000, restarts=4,
                          init_scale={"W2": 0.1, "W1": 0.1, "H1": 0.2}),
}
SIZES = dict(K=6, d=12, n=20, lr=0.1, log_every=1000)
SMOKE = dict(K=3, d=5, n=4, lr=0.1, log_every=50)


def plot(out):
    plt = common.pyplot()
    fig, axes = plt.subplots(len(ROWS), 6, figsize=(28, 4.6 * len(ROWS)))
    for row, model in zip(axes, ROWS):
        arrays, meta = common.load(out, f"{NAME}_{model}")
        theorem_figure.draw_row(row, arrays, meta)
        th = meta["theory"]
        where = f"c = {th['c']:.3g}" if "c" in th else f"K·a = {th['Ka']:.3g}"
        row[0].set_title(f"{model} ({where}): objective", fontsize=10)
        row[0].text(-0.35, 0.5, theorem_figure.setting_label(meta["config"]).replace(", GD", "\nGD"),
                    transform=row[0].transAxes, rotation=90, va="center", fontsize=7)
    fig.suptitle("Appendix G: Theorems 3.1, 3.2, 4.1, 4.2 at a second setting (rows: bias-free, "
                 "unregularized bias, linear extended, ReLU extended)  [our setting]", fontsize=13)
    common.tight_layout(fig, rect=(0.01, 0, 1, 0.97))
    return common.save_figure(fig, out, NAME)


def main(argv=None):
    args = common.parse_args(NAME, __doc__, argv)
    for model, settings in ROWS.items():
        cfg = {**settings, **(SMOKE if args.smoke else SIZES)}
        if args.smoke:
            cfg["steps"] = 200
            cfg["restarts"] = min(cfg.get("restarts", 1), 2)
        arrays, config = theorem_figure.run(model, cfg, args, f"{NAME} {model}")
        common.save(args.out, f"{NAME}_{model}", arrays, config)
    return plot(args.out)


if __name__ == "__main__":
    main()
