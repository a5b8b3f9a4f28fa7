"""Derive the shipped request-length tables from the real traces.

    python scripts/derive_length_tables.py [--data-dir ../shared/data] [--out-dir runtime/sim/length_tables]

Reads the Azure 2023 conv/code, ShareGPT and arXiv traces (data README section 3.1) and writes
``runtime/sim/length_tables/{sharegpt,arxiv,azure_conv,azure_code}.csv``: 1001 quantiles of the prompt and output
lengths plus a header recording the source, row count, means and prompt/output Spearman correlation. The same
data always gives byte-identical files; ``tests/runtime/sim/test_length_tables.py`` checks that. The traces
themselves never enter the repository.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from runtime.sim.length_tables import SOURCES, TABLE_DIR, LengthTable, write_tables

REPO_ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=REPO_ROOT.parent / "shared" / "data",
                        help="root of the shared data (holds traces/azure2023, traces/sarathi-serve, traces/vidur)")
    parser.add_argument("--out-dir", type=Path, default=TABLE_DIR, help="where the <name>.csv tables are written")
    parser.add_argument("--names", nargs="*", choices=list(SOURCES), default=None,
                        help="derive only these tables (default: all)")
    args = parser.parse_args(argv)
    for path in write_tables(args.data_dir, args.out_dir, args.names):
        table = LengthTable.read(path)
        print(
            f"{path}: {table.num_rows} rows, prompt mean {table.prompt_mean:.1f} "
            f"p50 {_at(table.prompt_tokens, 0.5)} p99 {_at(table.prompt_tokens, 0.99)}, output mean "
            f"{table.output_mean:.1f} p50 {_at(table.output_tokens, 0.5)} p99 {_at(table.output_tokens, 0.99)}, "
            f"spearman {table.spearman:.3f}, {path.stat().st_size} bytes"
        )


def _at(values, q: float) -> float:
    return float(values[round(q * (len(values) - 1))])


if __name__ == "__main__":
    main()
