"""Decode-step time against the number of decodes on the live runtime: the LM head's staircase on CPU.

    .venv/bin/python bench/live_lm_head.py                                    # llama_15m, 1 and 2 threads
    .venv/bin/python bench/live_lm_head.py --cost-model-file /tmp/t7/llama_15m_cpu.yaml
    .venv/bin/python bench/live_lm_head.py --quick --out /tmp/lmh            # smoke: tiny model, seconds

Times decode-only steps of ``--sizes`` decodes, each at context ``--context``, through ``LiveExecutor`` the
profiler's way (``runtime.live.timing.time_settled``: settling runs of the same batch, then one timed run; the
median of ``--rounds`` rounds, sizes and variants in a seeded random order each round), once per ``--threads``
value and per variant of the LM head:

* ``runtime``: the model as it is (``LlamaForCausalLM.logits``: on one CPU thread, vocabulary blocks for 4–12
  sampled rows, ``runtime.live.model.LM_HEAD_BLOCKED_ROWS``; one GEMM otherwise);
* ``gemm``: always one GEMM of the sampled rows over the whole vocabulary (``F.linear``);
* ``vocab-blocked``: always in vocabulary blocks of ``--block-rows`` rows of ``W_lm`` (default: the runtime's,
  ``lm_head_block_rows``), a block small enough to stay in L2 while every row uses it.

Comparing the last two per size and thread count is how the runtime's window was chosen (BENCHMARKS.md, "The LM
head staircase"); on another CPU the window may differ.

With ``--cost-model-file``, each size also gets the cost model's prediction and measured / predicted: a linear
cost model prices every decode alike, so a staircase in this curve is a shape error no coefficient can fix.

Outputs in ``--out`` (default ``bench/results/live_lm_head``): ``steps.csv`` (threads, variant, num_decodes,
median/min ms, predicted ms, ratio), ``table.md`` and ``lm_head.png``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from runtime.cli import CONF_DIR  # noqa: E402
from runtime.live.model import lm_head_block_rows, vocab_blocked_linear  # noqa: E402
from runtime.live.compositions import Composition  # noqa: E402
from runtime.live.timing import Profiler, time_settled  # noqa: E402

SIZES = (1, 2, 3, 4, 5, 6, 8, 10, 12, 13, 14, 16, 20, 24, 32, 48, 64)


def variants(model, block_rows: int | None) -> dict:
    """The three ways to compute ``model.logits`` (module docstring), by name."""
    weight = model.lm_head.weight
    rows = block_rows or lm_head_block_rows(weight.shape[1], weight.element_size())
    return {
        "runtime": model.logits,
        "gemm": lambda hidden: F.linear(model.model.norm(hidden), weight).float(),
        "vocab-blocked": lambda hidden: vocab_blocked_linear(model.model.norm(hidden), weight, rows),
    }


def time_sizes(cfg, sizes, context: int, rounds: int, block_rows: int | None, settle_s: float, seed: int
               ) -> list[dict]:
    """Median settled step time per (variant, size) on one executor built from ``cfg``."""
    comps = [Composition("decode", "lm_head", [], [context] * n) for n in sizes]
    profiler = Profiler(cfg, instantiate(cfg.model), comps)
    model = profiler.executor.model
    ways = variants(model, block_rows)
    rng = np.random.default_rng(seed)
    times: dict[tuple[str, int], list[float]] = {(v, n): [] for v in ways for n in sizes}
    try:
        for _ in range(rounds):
            for variant in rng.permutation(list(ways)):
                model.logits = ways[variant]
                for i in rng.permutation(len(sizes)):
                    times[(variant, sizes[i])].append(time_settled(profiler, comps[i], 1, settle_s))
    finally:
        del model.logits  # the instance attribute shadowed the method
    return [dict(variant=v, num_decodes=n, median_ms=float(np.median(t)) * 1e3, min_ms=float(np.min(t)) * 1e3)
            for (v, n), t in times.items()]


def markdown_table(steps: pd.DataFrame) -> str:
    """One row per size; per thread count and variant the median ms (and measured / predicted if known)."""
    steps = steps.sort_values(["threads", "variant", "num_decodes"])
    keys = list(dict.fromkeys(zip(steps.threads, steps.variant)))
    ratio = steps.ratio.notna().any()
    head = ["decodes"] + [f"{v}, {t} thr. (ms{', × pred.' if ratio else ''})" for t, v in keys]
    lines = ["| " + " | ".join(head) + " |", "|" + "---:|" * len(head)]
    for n in sorted(steps.num_decodes.unique()):
        cells = [str(n)]
        for t, v in keys:
            row = steps[(steps.threads == t) & (steps.variant == v) & (steps.num_decodes == n)].iloc[0]
            cells.append(f"{row.median_ms:.2f}" + (f" (×{row.ratio:.2f})" if ratio else ""))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(steps: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for (threads, variant), g in steps.groupby(["threads", "variant"]):
        g = g.sort_values("num_decodes")
        ax.plot(g.num_decodes, g.median_ms, marker="o", ms=3, label=f"{variant}, {threads} thread(s)")
    predicted = steps.dropna(subset=["predicted_ms"]).drop_duplicates("num_decodes").sort_values("num_decodes")
    if len(predicted):
        ax.plot(predicted.num_decodes, predicted.predicted_ms, "k--", lw=1, label="cost model")
    ax.set_xlabel("decodes in the step (each at the same context)")
    ax.set_ylabel("step time (ms, median)")
    ax.set_title("Live decode step against batch size")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="llama_15m")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--context", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--block-rows", type=int, default=None,
                        help="rows of W_lm per vocabulary block (default: the runtime's)")
    parser.add_argument("--settle-s", type=float, default=0.05)
    parser.add_argument("--cost-model-file", type=Path, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/live_lm_head")
    parser.add_argument("--quick", action="store_true", help="tiny model, 3 sizes, 2 rounds, no settling")
    args = parser.parse_args(argv)
    if args.quick:
        args.model, args.sizes, args.rounds, args.settle_s, args.context = "tiny", [1, 4, 13], 2, 0.0, 16
    too_small = any(n < 1 for n in [*args.sizes, *args.threads, args.rounds])
    if too_small or (args.block_rows is not None and args.block_rows < 1):
        parser.error("--sizes, --rounds, --block-rows and --threads must be >= 1")
    cost_model = instantiate(OmegaConf.load(args.cost_model_file)) if args.cost_model_file else None
    threads_before = torch.get_num_threads()
    rows = []
    try:
        for threads in args.threads:
            with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
                cfg = compose(config_name="config", overrides=[
                    "progress=false", "runtime=live", f"model={args.model}", "runtime.device=cpu",
                    f"runtime.threads={threads}"])
            for row in time_sizes(cfg, args.sizes, args.context, args.rounds, args.block_rows, args.settle_s,
                                  args.seed):
                rows.append(dict(threads=threads, **row))
    finally:
        torch.set_num_threads(threads_before)
    steps = pd.DataFrame(rows)
    steps["predicted_ms"] = [cost_model.predict_deterministic([], [args.context] * n) * 1e3 if cost_model else np.nan
                             for n in steps.num_decodes]
    steps["ratio"] = steps.median_ms / steps.predicted_ms
    args.out.mkdir(parents=True, exist_ok=True)
    steps.to_csv(args.out / "steps.csv", index=False)
    table = markdown_table(steps)
    (args.out / "table.md").write_text(table)
    plot(steps, args.out / "lm_head.png")
    print(table)
    return dict(steps=steps, table=table, out=args.out)


if __name__ == "__main__":
    main()
