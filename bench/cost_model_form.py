"""Would another cost-model form follow the live runtime better? Refit stored measurements, replay stored live steps.

    .venv/bin/python bench/cost_model_form.py bench/results/sim_vs_live_1thread_f
    .venv/bin/python bench/cost_model_form.py --measurements P/measurements.csv --iterations B/iterations.parquet

Offline: no model runs. The inputs are what ``accelgen-profile`` (``measurements.csv``: the grid, held-out and
served steps it timed) and ``bench/sim_vs_live.py`` (``iterations.parquet``: every live step of the comparison,
measured) wrote; a directory holding both can be given alone. Five forms are fitted on the same rows with the
profiler's weights (``runtime.live.profile_fit.fit_weights``):

* ``linear``: the simulator's history-free form,
  ``β0 + β1·max(N, n_knee) + β2·Σc(q + c/2) + β3·Σctx + β4·|B|``,
  fitted by ``runtime.live.profile_fit.fit_rows`` with neither term below (the profiler's fit with
  ``profile.fit_settle=false profile.max_seq_knee=0``: its train MAPE is then the YAML's);
* ``linear + settling``: the same form with the simulator's settling factor ``1 + a·ρ^k`` on decode-only steps
  ``k`` steps after a prefill (``runtime.sim.settle``), fitted by ``fit_rows`` as the profiler does with
  ``profile.max_seq_knee=0``; each served step's ``k`` is the CSV's ``since_prefill``, or for older files is
  recovered from its ``id`` (``<run>#<step>``), and each live step's from its run's step order;
* ``linear + a·ρ^k seconds``: the settling as added time instead of a factor, one more NNLS column ``ρ^k``
  (``ρ`` searched over ``runtime.sim.settle.DECAYS``), so a large batch right after a prefill pays the same as a
  small one; evaluated only, the simulator's form is the factor;
* ``linear + β5·min(|B|, s_knee)``: one concave term more, so the first ``s_knee`` sequences of a step cost
  ``β4 + β5`` each and later ones ``β4`` (``runtime.sim.cost_model``); ``fit_rows`` with ``profile.fit_settle=false``
  and ``profile.max_seq_knee`` = ``--max-s-knee``. On CPU the LM head's GEMM costs less per sampled row as rows
  are added (``bench/live_lm_head.py``), which the linear form cannot follow;
* ``linear + settling + β5·min(|B|, s_knee)``: both, the profiler's default fit (``fit_rows``), where served steps
  carry their ``k``.

Reported per form: the weighted train MAPE, the held-out MAPE, the replay MAPE of the live steps (all, and per
arrival rate), and for decode-only live steps the median of measured / predicted by number of decodes and by
``k`` (decode-only steps since the last step with prefill tokens: how much of the settling is left).
Outputs in ``--out`` (default: the first input's directory): ``form.md``, ``form.csv``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from runtime.live.profile import DEFAULTS  # noqa: E402
from runtime.live.profile_fit import features_of, fit_rows, fit_weights, since_prefill  # noqa: E402
from runtime.sim.linear_fit import design, weighted_nnls  # noqa: E402
from runtime.sim.settle import DECAYS, factors, steps_since_prefill  # noqa: E402

#: Decode-only batch sizes reported together (right-closed bins).
BINS = (0, 1, 3, 6, 9, 12, 16, 10**6)
#: Decode-only steps by ``k``, the decode-only steps since the last prefill (right-closed; -1: none before).
K_BINS = (-2, -1, 0, 1, 3, 7, 10**6)


def live_since_prefill(iterations: pd.DataFrame) -> np.ndarray:
    """``k`` of every live step, from the step order of its own run (scheduler and rate)."""
    out = np.full(len(iterations), -1, dtype=np.int64)
    if not {"scheduler", "rate", "step"} <= set(iterations.columns):
        return out
    for _, group in iterations.groupby(["scheduler", "rate"], sort=False):
        order = group.sort_values("step")
        out[iterations.index.get_indexer(order.index)] = steps_since_prefill((order.num_prefill_tokens > 0).tolist())
    return out


def fit_form(rows: pd.DataFrame, weights: np.ndarray, max_s_knee: int, opts: dict) -> dict:
    """The forms on ``rows`` (grid and served, with ``since_prefill``): coefficients, knees, weighted train MAPE."""
    t = rows.time_s.to_numpy(dtype=float)

    def profiler(settle: bool, seq_knee: int) -> dict:
        fit = fit_rows(rows, {**DEFAULTS, **opts, "fit_settle": settle, "max_seq_knee": seq_knee})
        form = dict(beta=fit.beta, n_knee=fit.n_knee, s_knee=fit.s_knee, train=fit.train_mape)
        return {**form, "settle": (fit.settle_amplitude, fit.settle_decay)} if settle else form

    forms = {"linear": profiler(False, 0)}
    served_k = bool((rows.since_prefill >= 0).any())
    if served_k:
        forms["linear + settling"] = profiler(True, 0)
        k, decode_only = rows.since_prefill.to_numpy(), (rows.num_prefill_tokens == 0).to_numpy()
        lin = forms["linear"]
        x = design(*features_of(rows), lin["n_knee"])
        added = None
        for decay in DECAYS:
            beta, err = weighted_nnls(np.column_stack([x, additive_column(k, decode_only, decay)]), t, weights)
            if added is None or err < added["train"] - 1e-12:
                added = dict(beta=beta, n_knee=lin["n_knee"], s_knee=0, train=err, additive=float(decay))
        forms["linear + a·ρ^k seconds"] = added
    forms["linear + β5·min(|B|, s_knee)"] = profiler(False, max_s_knee)
    if served_k:
        forms["linear + settling + β5·min(|B|, s_knee)"] = profiler(True, max_s_knee)
    return forms


def additive_column(k, decode_only, decay: float) -> np.ndarray:
    """``ρ^k`` for decode-only steps after a prefill, else 0: settling as added seconds (``a`` its coefficient)."""
    k, decode_only = np.asarray(k), np.asarray(decode_only, dtype=bool)
    return np.where(decode_only & (k >= 0), float(decay) ** np.maximum(k, 0), 0.0)


def predict(form: dict, n, work, sum_ctx, seqs, k=None, decode_only=None) -> np.ndarray:
    """The form's times; with ``k`` and ``decode_only``, with the settling where the form has one (a factor, or
    added seconds); without them (held-out compositions, timed settled), none."""
    n, work, sum_ctx, seqs = (np.asarray(a, dtype=float) for a in (n, work, sum_ctx, seqs))
    if "additive" in form:
        x = design(n, work, sum_ctx, seqs, form["n_knee"])
        g = additive_column(k, decode_only, form["additive"]) if k is not None else np.zeros(len(x))
        return np.column_stack([x, g]) @ form["beta"]
    t = design(n, work, sum_ctx, seqs, form["n_knee"], form["s_knee"]) @ form["beta"]
    if "settle" in form and k is not None:
        t = t * factors(np.asarray(k), np.asarray(decode_only, dtype=bool), *form["settle"])
    return t


def evaluate(forms: dict, measurements: pd.DataFrame, iterations: pd.DataFrame) -> pd.DataFrame:
    held = measurements[measurements.split == "heldout"]
    iterations = iterations.reset_index(drop=True)
    n_live = iterations.num_prefill_tokens + iterations.num_decodes
    decode = (iterations.kind == "decode").to_numpy()
    k_live = live_since_prefill(iterations)
    k_bins = pd.cut(k_live[decode], list(K_BINS)).to_numpy()
    bins = pd.cut(iterations.num_decodes[decode], list(BINS))
    out = []
    for name, form in forms.items():
        decay = form["settle"][1] if "settle" in form else form.get("additive", 0.0)
        row = dict(form=name, s_knee=form["s_knee"], train_mape=form["train"],
                   settle_amplitude=form.get("settle", (0.0, 0.0))[0], settle_decay=decay,
                   additive_ms=float(form["beta"][5]) * 1e3 if "additive" in form else 0.0)
        row.update({f"beta{i}": float(b) for i, b in enumerate(form["beta"])})
        if len(held):
            p = predict(form, held.num_tokens, held.prefill_attn_work, held.sum_decode_ctx, held.num_seqs)
            row["heldout_mape"] = float(np.mean(np.abs(p - held.time_s) / held.time_s) * 100)
        pred = predict(form, n_live, iterations.prefill_attn_work, iterations.sum_decode_ctx, iterations.num_seqs,
                       k_live, decode)
        ape = np.abs(pred - iterations.measured_s.to_numpy()) / iterations.measured_s.to_numpy() * 100
        row["replay_mape"] = float(ape.mean())
        for rate, group in pd.Series(ape).groupby(iterations.rate.to_numpy()):
            row[f"replay_mape@{rate:g}"] = float(group.mean())
        ratio = pd.Series(iterations.measured_s.to_numpy()[decode] / pred[decode])
        for interval, group in ratio.groupby(bins.to_numpy(), observed=True):
            row[f"decode {_label(interval)}"] = float(group.median())
        for interval, group in ratio.groupby(k_bins, observed=True):
            row[f"after k={_k_label(interval)}"] = float(group.median())
        out.append(row)
    return pd.DataFrame(out)


def _k_label(interval) -> str:
    lo, hi = int(interval.left) + 1, int(interval.right)
    return "none" if hi < 0 else (f"{lo}" if lo == hi else (f"{lo}+" if hi >= K_BINS[-1] else f"{lo}–{hi}"))


def _label(interval) -> str:
    lo, hi = int(interval.left) + 1, int(interval.right)
    return f"{lo}" if lo == hi else (f"{lo}+" if hi >= BINS[-1] else f"{lo}–{hi}")


def markdown(table: pd.DataFrame) -> str:
    rates = [c for c in table.columns if c.startswith("replay_mape@")]
    bins = [c for c in table.columns if c.startswith("decode ") or c.startswith("after k=")]
    head = ["form", "s_knee", "settling (a, ρ)", "train MAPE", "held-out MAPE", "replay MAPE",
            *(f"replay @ {c.split('@')[1]} req/s" for c in rates), *(f"{c} (live / pred.)" for c in bins)]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for _, r in table.iterrows():
        cells = [r.form.replace("|", "\\|"), str(r.s_knee or "–"),
                 f"{r.settle_amplitude:.3f}, {r.settle_decay:g}" if r.settle_amplitude
                 else (f"{r.additive_ms:.2f} ms, {r.settle_decay:g}" if r.additive_ms else "–"),
                 f"{r.train_mape:.1f} %",
                 f"{r.heldout_mape:.1f} %" if "heldout_mape" in r and pd.notna(r.heldout_mape) else "–",
                 f"**{r.replay_mape:.1f} %**", *(f"{r[c]:.1f} %" for c in rates),
                 *(f"×{r[c]:.2f}" if pd.notna(r[c]) else "–" for c in bins)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dir", nargs="?", type=Path, help="a directory with measurements.csv and iterations.parquet")
    parser.add_argument("--measurements", type=Path, help="accelgen-profile's measurements.csv")
    parser.add_argument("--iterations", type=Path, help="bench/sim_vs_live.py's iterations.parquet")
    parser.add_argument("--small-batch-weight", type=float, default=DEFAULTS["small_batch_weight"])
    parser.add_argument("--serve-grid-weight", type=float, default=DEFAULTS["serve_grid_weight"])
    parser.add_argument("--max-s-knee", type=int, default=DEFAULTS["max_seq_knee"])
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    measurements_path = args.measurements or (args.dir / "measurements.csv" if args.dir else None)
    iterations_path = args.iterations or (args.dir / "iterations.parquet" if args.dir else None)
    if measurements_path is None or iterations_path is None:
        parser.error("give a directory, or both --measurements and --iterations")
    for path in (measurements_path, iterations_path):
        if not path.is_file():
            parser.error(f"{path} does not exist")
    if args.max_s_knee < 2:
        parser.error("--max-s-knee must be >= 2")
    measurements = pd.read_csv(measurements_path)
    iterations = pd.read_parquet(iterations_path)
    measurements["since_prefill"] = since_prefill(measurements)
    rows = measurements[measurements.split.isin(["train", "serve"])].reset_index(drop=True)
    opts = dict(small_batch_weight=args.small_batch_weight, serve_grid_weight=args.serve_grid_weight)
    forms = fit_form(rows, fit_weights(rows, opts), args.max_s_knee, opts)
    table = evaluate(forms, measurements, iterations)
    out = args.out or measurements_path.parent
    out.mkdir(parents=True, exist_ok=True)
    text = markdown(table)
    table.to_csv(out / "form.csv", index=False)
    (out / "form.md").write_text(text)
    print(text)
    return dict(table=table, forms=forms, markdown=text)


if __name__ == "__main__":
    main()
