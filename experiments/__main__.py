"""Rebuild every figure: `python -m experiments [--only NAME[,NAME]] [--smoke] [--quiet] [--out DIR]`.

Each script runs in its own process (each chooses its own precision) and writes OUT/NAME.png and
OUT/data/NAME.{npz,json}.
"""
import argparse
import subprocess
import sys
import time

from experiments import SCRIPTS
from experiments.common import FIGURES


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m experiments", description=__doc__)
    p.add_argument("--only", default=None, help=f"comma list of: {', '.join(SCRIPTS)}")
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--out", default=FIGURES)
    args = p.parse_args(argv)
    names = SCRIPTS if args.only is None else tuple(args.only.split(","))
    unknown = [n for n in names if n not in SCRIPTS]
    if unknown:
        p.exit(2, f"python -m experiments: error: unknown figure(s) {unknown}; "
                  f"choose from: {', '.join(SCRIPTS)}\n")
    flags = ["--out", args.out] + ["--smoke"] * args.smoke + ["--quiet"] * args.quiet
    failed = []
    for name in names:
        t0 = time.perf_counter()
        rc = subprocess.call([sys.executable, "-m", f"experiments.{name}", *flags])
        print(f"{name}: {'ok' if rc == 0 else f'FAILED (exit {rc})'} in "
              f"{time.perf_counter() - t0:.1f} s", file=sys.stderr)
        if rc:
            failed.append(name)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
