"""Renders ``bench/live_throughput.py``'s results: the roofline (the bound of a step's latency) and each system's
steps against it, the Markdown tables, ``throughput.png`` and the BENCHMARKS.md-ready section."""
from __future__ import annotations

import datetime as dt
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

BENCH_DIR = Path(__file__).resolve().parent
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))

from hf_generate import hf_batch_steps  # noqa: E402
from runtime.core.run_log import atomic_write  # noqa: E402

REPO_ROOT = BENCH_DIR.parent
TARGET_SPEEDUP = 2.0


# Roofline ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Roofline:
    """Bytes and FLOPs of one forward step of a Llama with ``spec``'s shapes in ``element`` bytes per value."""
    spec: object
    element: int
    bandwidth_gbps: float
    peak_tflops: float

    @property
    def weight_bytes(self) -> int:
        return self.spec.expected_num_params * self.element

    @property
    def kv_bytes_per_token(self) -> int:
        s = self.spec
        return 2 * s.num_layers * s.num_kv_heads * s.head_dim * self.element

    def bytes(self, tokens, kv_read_tokens):
        return self.weight_bytes + (np.asarray(kv_read_tokens) + np.asarray(tokens)) * self.kv_bytes_per_token

    def flops(self, tokens, sampled, attn_pairs):
        s = self.spec
        return (2.0 * np.asarray(tokens) * s.num_layers * s.layer_params + 2.0 * np.asarray(sampled) * s.vocab_size
                * s.hidden_size + 4.0 * s.num_layers * s.num_heads * s.head_dim * np.asarray(attn_pairs))

    def times(self, tokens, sampled, kv_read_tokens, attn_pairs) -> tuple[np.ndarray, np.ndarray]:
        """(memory-bound time, compute-bound time) in seconds."""
        mem = self.bytes(tokens, kv_read_tokens) / (self.bandwidth_gbps * 1e9)
        comp = self.flops(tokens, sampled, attn_pairs) / (self.peak_tflops * 1e12)
        return mem, comp


def roofline_rows(runs: list[dict], roof: Roofline) -> pd.DataFrame:
    rows = []
    for run in runs:
        if run["kind"] == "ours":
            steps = run["_steps"]
            mem, comp = roof.times(steps.tokens, steps.sampled, steps.kv_read_tokens, steps.attn_pairs)
            measured = steps.step_s.to_numpy()
            decode_only = (steps.prefill_tokens == 0).to_numpy()
        else:
            parts = [hf_batch_steps(w, b, n) for b, w, n, _ in run["_batches"]]
            frame = pd.concat(parts, ignore_index=True)
            mem, comp = roof.times(frame.tokens, frame.sampled, frame.kv_read_tokens, frame.attn_pairs)
            # HF is timed per batch: spread each batch's time over its steps in proportion to their rooflines.
            measured = np.empty(len(frame))
            start = 0
            for part, (_, _, _, t) in zip(parts, run["_batches"]):
                r = np.maximum(mem[start:start + len(part)], comp[start:start + len(part)])
                measured[start:start + len(part)] = t * r / r.sum()
                start += len(part)
            decode_only = (frame.decode_batch > 0).to_numpy()
        mem, comp = np.asarray(mem, float), np.asarray(comp, float)
        roofline = np.maximum(mem, comp)
        dec = decode_only
        rows.append({
            "system": run["system"],
            "steps": len(measured),
            "sum_step_s": float(measured.sum()),
            "sum_roofline_s": float(roofline.sum()),
            "roofline_efficiency": float(roofline.sum() / measured.sum()),
            "decode_steps": int(dec.sum()),
            "decode_step_ms_median": float(np.median(measured[dec]) * 1e3) if dec.any() else np.nan,
            "decode_mem_roofline_ms_median": float(np.median(mem[dec]) * 1e3) if dec.any() else np.nan,
            "decode_compute_roofline_ms_median": float(np.median(comp[dec]) * 1e3) if dec.any() else np.nan,
            "decode_latency_over_roofline_median": float(np.median(measured[dec] / roofline[dec])) if dec.any()
            else np.nan,
            "exact_per_step": run["kind"] == "ours",
        })
    return pd.DataFrame(rows)


# Tables ------------------------------------------------------------------------------------------------------------
def fmt(x, digits=1) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if isinstance(x, (int, np.integer)):
        return f"{int(x):,}"
    return f"{x:,.{digits}f}"


def summary_table(summary: pd.DataFrame) -> str:
    head = ("| system | output tok/s | vs best HF | wall s | tok per CPU-s | useful output tokens | "
            "padded output tokens | prompt tokens (padded) | steps | max_num_seqs / token budget |")
    lines = [head, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for _, r in summary.iterrows():
        cap = (f"{int(r.max_num_seqs)} / {int(r.token_budget)}" if r.kind == "ours"
               else f"static batch {int(r.hf_batch_size)}")
        lines.append(f"| {r.system} | **{r.output_tok_per_s:,.0f}** | {r.speedup_vs_best_hf:.2f}× | {r.wall_s:.2f} | "
                     f"{r.useful_output_tokens / r.cpu_s:,.0f} | {int(r.useful_output_tokens):,} | "
                     f"{int(r.padded_output_tokens):,} | {int(r.padded_prompt_tokens):,} | {int(r.steps):,} | {cap} |")
    return "\n".join(lines)


def breakdown_table(summary: pd.DataFrame) -> str:
    ours = summary[summary.kind == "ours"]
    lines = ["| system | wall s | engine + scheduler s | build_step_batch s | forward + sample s | "
             "steps with prefill s | decode-only steps s (count) | mean decode batch |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for _, r in ours.iterrows():
        lines.append(f"| {r.system} | {r.wall_s:.2f} | {r.engine_scheduler_s:.2f} | {r.build_batch_s:.2f} | "
                     f"{r.forward_sample_s:.2f} | {r.prefill_steps_s:.2f} | {r.decode_only_steps_s:.2f} "
                     f"({int(r.decode_only_steps):,}) | {r.mean_decode_batch:.1f} |")
    return "\n".join(lines)


def roofline_table(roof_df: pd.DataFrame) -> str:
    lines = ["| system | Σ step time s | Σ roofline s | roofline / measured | decode step ms (median) | "
             "memory roofline ms | compute roofline ms | latency / roofline (median) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for _, r in roof_df.iterrows():
        lines.append(f"| {r.system}{'' if r.exact_per_step else ' ¹'} | {r.sum_step_s:.2f} | {r.sum_roofline_s:.3f} | "
                     f"{r.roofline_efficiency:.1%} | {fmt(r.decode_step_ms_median, 2)} | "
                     f"{fmt(r.decode_mem_roofline_ms_median, 3)} | {fmt(r.decode_compute_roofline_ms_median, 3)} | "
                     f"{fmt(r.decode_latency_over_roofline_median, 1)}× |")
    return "\n".join(lines)


# Plot --------------------------------------------------------------------------------------------------------------
def plot(summary: pd.DataFrame, ours_steps: dict[str, pd.DataFrame], roof: Roofline | None, path: Path,
         title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2 if roof is not None else 1, figsize=(12 if roof is not None else 6, 4.5),
                             squeeze=False)
    ax1 = axes[0, 0]
    colors = ["tab:blue" if k == "ours" else "tab:gray" for k in summary.kind]
    ax1.bar(summary.system, summary.output_tok_per_s, color=colors)
    best_hf = summary[summary.kind == "hf"].output_tok_per_s.max()
    ax1.axhline(TARGET_SPEEDUP * best_hf, color="tab:red", ls="--", lw=1, label=f"target: {TARGET_SPEEDUP:g}× best HF")
    for i, v in enumerate(summary.output_tok_per_s):
        ax1.text(i, v, f"{v:,.0f}", ha="center", va="bottom", fontsize=8)
    ax1.set_ylabel("useful output tokens / s")
    ax1.set_title("offline throughput")
    ax1.tick_params(axis="x", rotation=30)
    ax1.legend(fontsize=8)
    if roof is None:
        fig.suptitle(title, fontsize=10)
        fig.tight_layout()
        atomic_write(path, lambda p: fig.savefig(p, dpi=120, format="png"))
        plt.close(fig)
        return
    ax2 = axes[0, 1]
    for name, steps in ours_steps.items():
        dec = steps[steps.prefill_tokens == 0]
        if dec.empty:
            continue
        ax2.scatter(dec.decode_batch, dec.step_s * 1e3, s=6, alpha=0.5, label=f"{name} (measured)")
    allsteps = pd.concat(ours_steps.values()) if ours_steps else pd.DataFrame()
    dec = allsteps[allsteps.prefill_tokens == 0] if not allsteps.empty else allsteps
    if not dec.empty:
        mem, comp = roof.times(dec.tokens, dec.sampled, dec.kv_read_tokens, dec.attn_pairs)
        ax2.scatter(dec.decode_batch, np.maximum(mem, comp) * 1e3, s=4, color="black", marker="x", alpha=0.4,
                    label="roofline (max of memory, compute)")
    ax2.set_xlabel("decode batch (decode-only steps)")
    ax2.set_ylabel("step latency (ms)")
    ax2.set_yscale("log")
    ax2.set_title(f"per-iteration latency vs roofline ({roof.bandwidth_gbps:g} GB/s, {roof.peak_tflops:g} TFLOP/s)")
    ax2.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, dpi=120, format="png"))
    plt.close(fig)


# Section -----------------------------------------------------------------------------------------------------------
def verdict(best: pd.DataFrame) -> str:
    """Our fastest system against the best HF figure and the target."""
    hf = best[best.kind == "hf"]
    best_hf = hf.output_tok_per_s.max()
    best_hf_system = best.loc[hf.output_tok_per_s.idxmax(), "system"]
    ours = best[best.kind == "ours"]
    if ours.empty:
        return "–"
    top = ours.loc[ours.output_tok_per_s.idxmax()]
    return (f"{top.system}: **{top.speedup_vs_best_hf:.2f}×** the best HF figure ({best_hf_system}, "
            f"{best_hf:,.0f} tok/s); target ≥ {TARGET_SPEEDUP:g}× — "
            + ("**met**" if top.speedup_vs_best_hf >= TARGET_SPEEDUP else "**not met**"))


def machine_text(info: dict) -> str:
    """The machine line; the load average is read now, at the end of the runs."""
    return (f"{info['cpu']}, {info['cores']} cores" + (f", GPU {info['gpu']}" if "gpu" in info else "")
            + f"; torch {info['torch']}, transformers {info['transformers']}, Python {info['python']}; "
            f"torch threads: {info['threads']}; load average (1 min) {info['load_avg_start']} at start, "
            f"{os.getloadavg()[0]:.2f} at end")


def summary_markdown(best: pd.DataFrame, spec, workload, args, device_name: str, dtype_name: str) -> str:
    """``summary.md``: the setting, the throughput table, the verdict and the time breakdown of our runs."""
    out_lens = workload.num_output_tokens.astype(np.int64)
    requested = int(out_lens.sum())
    return "\n".join([
        f"Model `{spec.name}` ({spec.expected_num_params / 1e6:.1f}M parameters, random weights from seed "
        f"{args.seed}), workload `{args.workload}` lengths, {args.num_requests} requests "
        + ("all at time 0" if args.arrival_rate is None else f"arriving at {args.arrival_rate:g} req/s")
        + f" ({int(workload.num_prompt_tokens.sum()):,} prompt tokens, {requested:,} output tokens; "
        f"output lengths mean {out_lens.mean():.1f}, max {out_lens.max()}), device {device_name}, {dtype_name}.",
        "",
        summary_table(best),
        "",
        verdict(best),
        "",
        "tok per CPU-s: useful output tokens per CPU-second of this process (all threads, spin-waits included); "
        "with one thread it leaves out time other tenants of a shared machine took.",
        "",
        "Time breakdown of our runs (engine + scheduler = wall − Σ executor step time):",
        "",
        breakdown_table(best),
    ])


def roofline_markdown(roof: Roofline | None, roof_df: pd.DataFrame, hw_name: str | None) -> str:
    if roof is None:
        return ("\nNo roofline: no conf/hardware file for this device (pass --hardware, or --mem-bandwidth-gbps "
                "and --peak-tflops).")
    return "\n".join([
        "",
        f"**Per-iteration latency vs roofline** (hardware `{hw_name}`: {roof.bandwidth_gbps:g} GB/s, "
        f"{roof.peak_tflops:g} TFLOP/s; per step: weights {roof.weight_bytes / 2**20:.1f} MiB + KV "
        f"{roof.kv_bytes_per_token:,} B per token read or written; roofline = max(bytes / bandwidth, "
        "FLOPs / peak)):",
        "",
        roofline_table(roof_df),
        "",
        "¹ HF is timed per batch; its per-step times are the batch time spread over the modelled steps "
        "(padded prefill, then decodes over the padded cache) in proportion to their rooflines.",
    ])


def section_markdown(summary_md: str, roof_md: str, best: pd.DataFrame, hf_ref_system: str, machine: str, cmd: str,
                     out: Path) -> str:
    """The BENCHMARKS.md-ready section (``--md``): when, where and how it ran, the summary and the roofline."""
    stamp = dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    agree = "; ".join(f"{r.system}: {r.exact_match_requests:.0%} of requests identical, "
                      f"{r.matching_prefix_tokens:.0%} of tokens before the first mismatch"
                      for _, r in best[best.kind == "ours"].iterrows())
    return "\n".join([
        "## Live runtime vs Hugging Face generate: offline throughput",
        "",
        f"Measured {stamp}. Machine: {machine}.",
        "",
        "```",
        cmd,
        "```",
        "",
        summary_md,
        roof_md,
        "",
        f"Same weights (our `build_model`, checked tensor-equal, loaded into `transformers.LlamaForCausalLM`), same "
        "prompts (`synthetic_prompt` per request id), same device, dtype and threads. HF runs static batches in "
        "arrival order, left-padded, greedy, EOS disabled, each batch to its longest request "
        "(`min_new_tokens = max_new_tokens`); its tok/s counts only the requests' own output tokens. "
        f"Greedy agreement with {hf_ref_system}: {agree}.",
        "",
        f"Files: `{repo_relative(out)}/` (runs.csv, summary.csv, roofline.csv, steps.csv, throughput.png).",
        "",
    ])


def repo_relative(path: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(path)
