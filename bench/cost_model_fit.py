"""Cost-model fit report: coefficients and MAPE per operator group and whole iteration, for every shipped pair.

    .venv/bin/python bench/cost_model_fit.py [--data-dir ../shared/data]

Fits in memory (writes nothing) and prints the markdown table recorded in BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from runtime.sim.fit import REPO_ROOT, cross_check, fit_all, report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=REPO_ROOT / ".." / "shared" / "data")
    args = parser.parse_args()
    print(report(fit_all(args.data_dir)))
    print(cross_check(args.data_dir))


if __name__ == "__main__":
    main()
