"""Derive the shipped ``LinearCostModel`` coefficients from public GPU operator profiles (the scripted derivation).

    python -m runtime.sim.fit --data-dir ../shared/data --out conf/cost_model --report bench/results/cost_model_fit.md

Per (model, hardware) pair, times per iteration in seconds (profiles are ms per layer per GPU shard):

1. Linear layers. ``lin(N) = L · (Σ_ops mlp.csv(N) + 2 · AR(N))`` with ops input_layernorm, attn_pre_proj,
   attn_rope, attn_post_proj, post_attention_layernorm, mlp_up_proj, mlp_act, mlp_down_proj and ``add`` counted
   TWICE (a Llama layer has two residual adds; Vidur's profiler times one ``add`` call). ``emb`` is excluded, as
   Vidur does. ``AR(N)`` is the a100_dgx NCCL all-reduce of ``N·d·2`` bytes over TP GPUs in one node (0 at TP 1).
2. Attention. Only ``a100/.../Llama-2-70b-hf/attention.csv`` exists: Llama-2-70B at TP 2 on A100, i.e. 32 query
   heads and 4 KV heads of dim 128 per GPU. Other models and GPUs are DERIVED from it, keeping each kernel's
   launch floor ``t0`` (its smallest profiled time) fixed and scaling the rest by work and device speed::

       prefill (FlashAttention, compute-bound):  t = t0 + (t_ref − t0) · (H_q/TP · d_h)/(32·128) · F_A100/F_gpu
       decode  (KV reads, memory-bound):         t = t0 + (t_ref − t0) · (H_kv/TP · d_h)/(4·128) · BW_A100/BW_gpu

   with F, BW the datasheet peak BF16 FLOP/s and HBM bandwidth of ``conf/hardware``. Cross-check: the reference
   decode (128 seqs × 4032 tokens, 4 KV heads) reads KV at ~1.58 TB/s (78% of A100 HBM); LLMServingSim's RTX PRO
   6000 Llama-3.1-8B decode (256 × 16384, 8 KV heads) reads at ~1.53 TB/s (85% of 1.79 TB/s): decode time
   tracks KV bytes, so scaling by KV heads and bandwidth is consistent. The report prints both figures.
   Decode rows are keyed by (batch size ≤ 128, cached tokens): a batch is looked up at its mean context; above 128
   sequences the time scales linearly in batch size. Prefill rows are keyed by (chunk ≥ 64, cached tokens).
3. LM head: ``mlp_up_proj(|B|) · vocab / (2·I)`` (a GEMM of vocab·d weights vs the up-projection's 2·I·d).
4. Engine overhead (not in kernel profiles; section 3). From DistServe's vLLM engine fits on A100
   (``profiler-a100-80g.vllm.json``): the decode-iteration intercept ``a`` minus what OPT's operators take at one
   token (Vidur A100 linear ops of the same-TP Llama proxy, scaled by per-GPU layer weights, × OPT layers, plus
   all-reduces and LM head) gives ``engine_overhead_s``; the per-sequence slope ``c`` minus the operators' slope
   per added token gives ``β4``. TP 1 pairs use OPT-13B TP 1; TP 4 uses OPT-66B TP 4. The same value is used on
   H100 (host-side work is assumed GPU-independent).

Fit: ``β ≥ 0`` by non-negative least squares with rows divided by their target (relative error, since MAPE is
the metric): linear group ``a + β1·max(N, n_knee)`` (``n_knee`` by grid search: the GEMMs' memory-bound floor),
prefill attention ``a + β2·c(q + c/2)``, decode attention ``a + β3·Σctx``; ``β0 = a_lin + a_pf + a_dec +
LM head(1)``. Whole iterations: a seeded set of decode-only, prefill-only and mixed (Sarathi-style) batches is
timed by summing the interpolated profiles plus the same overhead, and compared with ``predict``.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from scipy.interpolate import LinearNDInterpolator, NearestNDInterpolator, RegularGridInterpolator
from scipy.optimize import nnls

from runtime.sim.cost_model import LinearCostModel
from runtime.sim.specs import HardwareSpec, ModelSpec

REPO_ROOT = Path(__file__).resolve().parents[2]
OPS = ("input_layernorm", "attn_pre_proj", "attn_rope", "attn_post_proj", "post_attention_layernorm",
       "mlp_up_proj", "mlp_act", "mlp_down_proj", "add", "add")  # add twice: two residual adds per layer
ATTN_REF = "profiles/vidur/compute/a100/meta-llama/Llama-2-70b-hf/attention.csv"
ATTN_REF_HEADS = (32, 4, 128)  # (query heads, KV heads, head dim) per GPU in the reference profile
A100 = (312.0, 2039.0)  # reference GPU: peak dense BF16 TFLOP/s, HBM GB/s (same numbers as conf/hardware)
# (model option, hardware option, Vidur model folder); cost-model file is f"{model}_{hardware}.yaml"
PAIRS = (("llama2_7b", "a100_80g", "Llama-2-7b-hf"), ("llama2_7b", "h100_80g", "Llama-2-7b-hf"),
         ("llama3_8b", "a100_80g", "Meta-Llama-3-8B"), ("llama2_70b", "a100_80g_tp4", "Llama-2-70b-hf"))
# DistServe reference engines (public HF shapes): layers, hidden, ffn (non-gated), vocab; proxy Vidur model by TP.
OPT = {1: ("facebook/opt-13b", 40, 5120, 20480, 50272, "Llama-2-7b-hf"),
       4: ("facebook/opt-66b", 64, 9216, 36864, 50272, "Llama-2-70b-hf")}
MS = 1e-3


def load_spec(group: str, option: str) -> ModelSpec | HardwareSpec:
    raw = yaml.safe_load((REPO_ROOT / "conf" / group / f"{option}.yaml").read_text())
    return (ModelSpec if group == "model" else HardwareSpec)(**{k: v for k, v in raw.items() if k != "_target_"})


def linear_ops(data: Path, gpu: str, vidur_model: str, tp: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(num_tokens, Σ ops per layer [s], mlp_up_proj per layer [s]) from Vidur's mlp.csv, mean stat."""
    df = pd.read_csv(data / f"profiles/vidur/compute/{gpu}/meta-llama/{vidur_model}/mlp.csv")
    df = df[df.num_tensor_parallel_workers == tp].groupby("num_tokens").mean(numeric_only=True)
    total = sum(df[f"time_stats.{op}.mean"] for op in OPS)
    return df.index.to_numpy(float), total.to_numpy() * MS, df["time_stats.mlp_up_proj.mean"].to_numpy() * MS


def all_reduce(data: Path, tp: int, hidden: int, n: np.ndarray) -> np.ndarray:
    """One NCCL all-reduce of n·hidden·2 bytes over tp GPUs of a DGX-A100 node [s]."""
    if tp == 1:
        return np.zeros_like(n, dtype=float)
    df = pd.read_csv(data / "profiles/vidur/network/a100_dgx/all_reduce.csv")
    df = df[(df.num_workers == tp) & (df.devices_per_node == tp)].groupby("size").mean(numeric_only=True)
    return np.interp(n * hidden * 2, df.index.to_numpy(float), df["time_stats.all_reduce.mean"].to_numpy()) * MS


@dataclass
class Attention:
    """Reference attention tables with the per-pair scaling of the module docstring; times per layer [s]."""

    pf_pts: np.ndarray  # [n, 2] (chunk, cached)
    pf_t: np.ndarray
    dec_b: np.ndarray
    dec_kv: np.ndarray
    dec_t: np.ndarray  # [len(dec_b), len(dec_kv)]
    s_pf: float = 1.0
    s_dec: float = 1.0
    _lin: object = field(default=None, repr=False)
    _near: object = field(default=None, repr=False)
    _grid: object = field(default=None, repr=False)

    @classmethod
    def load(cls, data: Path) -> Attention:
        df = pd.read_csv(data / ATTN_REF)
        pf, dc = df[df.is_prefill.astype(bool)], df[~df.is_prefill.astype(bool)]
        pf = pf.groupby(["prefill_chunk_size", "kv_cache_size"])["time_stats.attn_prefill.mean"].mean()
        dc = dc.pivot_table(index="batch_size", columns="kv_cache_size", values="time_stats.attn_decode.mean")
        pts = np.array(pf.index.tolist(), float)
        return cls(pts, pf.to_numpy() * MS, dc.index.to_numpy(float), dc.columns.to_numpy(float), dc.to_numpy() * MS)

    def scaled(self, model: ModelSpec, hw: HardwareSpec) -> Attention:
        tp, (hq, hkv, dh) = hw.tensor_parallel_size, ATTN_REF_HEADS
        s_pf = (model.num_heads / tp * model.head_dim) / (hq * dh) * A100[0] / hw.peak_tflops
        s_dec = (max(model.num_kv_heads / tp, 1) * model.head_dim) / (hkv * dh) * A100[1] / hw.hbm_bandwidth_gbps
        out = Attention(self.pf_pts, self.pf_t, self.dec_b, self.dec_kv, self.dec_t, s_pf, s_dec)
        t0 = self.pf_t.min()
        out._lin = LinearNDInterpolator(self.pf_pts, t0 + (self.pf_t - t0) * s_pf)
        out._near = NearestNDInterpolator(self.pf_pts, t0 + (self.pf_t - t0) * s_pf)
        d0 = self.dec_t.min()
        out._grid = RegularGridInterpolator((self.dec_b, self.dec_kv), d0 + (self.dec_t - d0) * s_dec,
                                            bounds_error=False, fill_value=None)
        return out

    def prefill(self, c: np.ndarray, q: np.ndarray) -> np.ndarray:
        # NOTE(fit): chunks below the 64-token grid cost the 64-token time (the kernel floor dominates there).
        pts = np.column_stack([np.clip(c, 64, 4096), np.clip(q, 0, 4032)])
        t = self._lin(pts)
        return np.where(np.isnan(t), self._near(pts), t)

    def decode(self, b: np.ndarray, mean_ctx: np.ndarray) -> np.ndarray:
        bb = np.clip(b, 1, self.dec_b[-1])
        t = self._grid(np.column_stack([bb, np.clip(mean_ctx - 1, 1, None)]))  # rows keyed by cached tokens
        return t * np.maximum(b / bb, 1.0)


def engine_overhead(data: Path, tp: int) -> tuple[float, float, str]:
    """(engine_overhead_s, β4, note) from DistServe's vLLM decode fit minus OPT's operator time (docstring 4)."""
    import json

    fits = json.loads((data / "profiles/distserve/profiler-a100-80g.vllm.json").read_text())
    name, layers, d, ffn, vocab, proxy_name = OPT[tp]
    a, _, c = fits[name][str(tp)]["decoding_smallbs"]
    proxy = load_spec("model", {"Llama-2-7b-hf": "llama2_7b", "Llama-2-70b-hf": "llama2_70b"}[proxy_name])
    n, ops, up = linear_ops(data, "a100", proxy_name, tp)
    ratio = (4 * d * d + 2 * d * ffn) / proxy.layer_params  # per-GPU layer weights, same TP
    opt_ops = layers * (ratio * ops + 2 * all_reduce(data, tp, d, n)) + up * vocab * d / (2 * proxy.intermediate_size
                                                                                          * proxy.hidden_size)
    slope = (np.interp(95, n, opt_ops) - opt_ops[0]) / 94
    overhead, beta4 = a * MS - opt_ops[0], max(c * MS - slope, 0.0)
    note = (f"DistServe vLLM A100 {name} TP{tp} decode fit a={a:.2f} ms, c={c:.4f} ms/seq minus OPT operators "
            f"({opt_ops[0] / MS:.2f} ms at 1 token, {slope / MS:.4f} ms/token)")
    return overhead, beta4, note


def _nnls_rel(cols: list[np.ndarray], y: np.ndarray) -> np.ndarray:
    a = np.column_stack(cols) / y[:, None]
    return nnls(a, np.ones_like(y))[0]


def _mape(pred: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(np.abs(pred - y) / y) * 100)


def compositions(rng: np.random.Generator, max_len: int = 4096, num_each: int = 1000) -> list[tuple[str, list, list]]:
    """Seeded iteration compositions (kind, prefill_chunks, decode_ctx): decode-only, prefill-only, mixed."""
    out = []
    for _ in range(num_each):
        b = int(np.exp(rng.uniform(0, np.log(256))) + 0.5)
        out.append(("decode", [], rng.integers(16, max_len + 1, b).tolist()))
    for _ in range(num_each):
        c = int(np.exp(rng.uniform(np.log(16), np.log(max_len))))
        out.append(("prefill", [(c, int(rng.integers(0, max_len - c + 1)))], []))
    for _ in range(num_each):
        budget = int(rng.choice([256, 512, 1024, 2048]))
        b = int(rng.integers(1, min(128, budget - 16) + 1))
        c = budget - b
        out.append(("mixed", [(c, int(rng.integers(0, max_len - c + 1)))], rng.integers(16, max_len + 1, b).tolist()))
    return out


def fit_pair(data: Path, model_opt: str, hw_opt: str, vidur_model: str, ref: Attention, seed: int = 0) -> dict:
    """Fit one pair; returns the YAML payload (constructor kwargs) plus diagnostics under ``_diag``."""
    model, hw = load_spec("model", model_opt), load_spec("hardware", hw_opt)
    tp, layers = hw.tensor_parallel_size, model.num_layers
    n, ops, up = linear_ops(data, hw.gpu, vidur_model, tp)
    ar = 2 * all_reduce(data, tp, model.hidden_size, n)
    lm_head = up * model.vocab_size / (2 * model.intermediate_size)
    attn = ref.scaled(model, hw)
    overhead, beta4, overhead_note = engine_overhead(data, tp)

    # Linear group: a + β1·max(N, knee), knee from a grid search on the profiled N values.
    y_lin = layers * (ops + ar)
    best = None
    for knee in [0.0, *n[n <= 2048]]:
        coef = _nnls_rel([np.ones_like(n), np.maximum(n, knee)], y_lin)
        err = _mape(coef[0] + coef[1] * np.maximum(n, knee), y_lin)
        if best is None or err < best[0] - 1e-12:
            best = (err, knee, coef)
    mape_lin, knee, (a_lin, beta1) = best
    mape_ar = None  # no all-reduce at TP 1
    if tp > 1:
        ar_coef = _nnls_rel([np.ones_like(n), n], layers * ar)
        mape_ar = _mape(ar_coef[0] + ar_coef[1] * n, layers * ar)
    # Prefill attention: a + β2·c(q + c/2) over the reference grid, scaled to this pair.
    c, q = ref.pf_pts[:, 0], ref.pf_pts[:, 1]
    y_pf, x_pf = layers * attn.prefill(c, q), c * (q + c / 2)
    a_pf, beta2 = _nnls_rel([np.ones_like(x_pf), x_pf], y_pf)
    # Decode attention: a + β3·B·ctx over the (batch, cached tokens) grid; ctx counts the new token.
    bb, kv = np.meshgrid(ref.dec_b, ref.dec_kv, indexing="ij")
    bb, ctx = bb.ravel(), kv.ravel() + 1
    y_dec, x_dec = layers * attn.decode(bb, ctx), bb * ctx
    a_dec, beta3 = _nnls_rel([np.ones_like(x_dec), x_dec], y_dec)

    beta0 = a_lin + a_pf + a_dec + lm_head[0]
    cm = LinearCostModel(beta0=beta0, beta1=beta1, beta2=beta2, beta3=beta3, beta4=beta4,
                         engine_overhead_s=overhead, n_knee=knee)
    # Whole iterations: interpolated profile sum + the same overhead vs predict.
    kinds, prof, pred = [], [], []
    for kind, chunks, dec in compositions(np.random.default_rng(seed)):
        ntok, nseq = sum(ch[0] for ch in chunks) + len(dec), len(chunks) + len(dec)
        t = layers * (np.interp(ntok, n, ops) + np.interp(ntok, n, ar))
        if chunks:
            t += layers * attn.prefill(np.array([ch[0] for ch in chunks]), np.array([ch[1] for ch in chunks])).sum()
        if dec:
            t += layers * attn.decode(np.array([len(dec)]), np.array([np.mean(dec)]))[0]
        t += np.interp(nseq, n, lm_head) + overhead + beta4 * nseq
        kinds.append(kind), prof.append(t), pred.append(cm.predict(chunks, dec))
    kinds, prof, pred = np.array(kinds), np.array(prof), np.array(pred)
    ape = np.abs(pred - prof) / prof * 100
    fit_error = {"linear_layers": mape_lin, "prefill_attention": _mape(a_pf + beta2 * x_pf, y_pf),
                 "decode_attention": _mape(a_dec + beta3 * x_dec, y_dec), "all_reduce": mape_ar,
                 "iteration": float(ape.mean()), "iteration_p95": float(np.percentile(ape, 95)),
                 **{f"iteration_{k}": float(ape[kinds == k].mean()) for k in ("decode", "prefill", "mixed")}}
    fit_error = {k: (None if v is None else round(v, 3)) for k, v in fit_error.items()}
    source = (f"Vidur {hw.gpu}/{vidur_model} mlp.csv TP{tp} (mean; add x2; emb excluded)"
              + (f" + 2 all-reduces/layer a100_dgx all_reduce.csv ({tp},{tp})" if tp > 1 else "")
              + f"; attention from {ATTN_REF} (Llama-2-70B TP2, 32 q / 4 kv heads per GPU) scaled above its "
              f"launch floor by x{attn.s_pf:.4g} (prefill: q heads x d_h / peak FLOP/s) and x{attn.s_dec:.4g} "
              f"(decode: kv heads x d_h / HBM bandwidth); LM head = mlp_up_proj x vocab/(2I); "
              f"engine overhead: {overhead_note}")
    return {"_target_": "runtime.sim.cost_model.LinearCostModel", "_convert_": "all",
            "name": f"{model_opt}_{hw_opt}", "beta0": float(beta0), "beta1": float(beta1), "beta2": float(beta2),
            "beta3": float(beta3), "beta4": float(beta4), "engine_overhead_s": float(overhead), "n_knee": float(knee),
            "noise_cv": 0.0, "seed": 0, "source": source, "fit_error": fit_error}


def fit_all(data_dir: Path) -> dict[str, dict]:
    """Fit every pair of ``PAIRS``; returns ``{file stem: yaml payload}``."""
    data = Path(data_dir)
    ref = Attention.load(data)
    return {f"{m}_{h}": fit_pair(data, m, h, v, ref) for m, h, v in PAIRS}


def report(fits: dict[str, dict]) -> str:
    """Markdown table of coefficients and MAPEs (%) per pair."""
    head = ("| pair | β0 ms | β1 µs/tok | n_knee | β2 ns/tok² | β3 ns/tok | β4 ms/seq | overhead ms | linear | "
            "all-reduce | prefill attn | decode attn | iter | iter decode | iter prefill | iter mixed | iter p95 |")
    rows = [head, "|" + "---|" * (head.count("|") - 1)]
    for name, f in fits.items():
        e = f["fit_error"]
        rows.append(
            f"| {name} | {f['beta0'] * 1e3:.3f} | {f['beta1'] * 1e6:.3f} | {f['n_knee']:.0f} | {f['beta2'] * 1e9:.4f} | "
            f"{f['beta3'] * 1e9:.4f} | {f['beta4'] * 1e3:.4f} | {f['engine_overhead_s'] * 1e3:.2f} | "
            f"{e['linear_layers']:.1f} | {'n/a' if e['all_reduce'] is None else format(e['all_reduce'], '.1f')} | {e['prefill_attention']:.1f} | "
            f"{e['decode_attention']:.1f} | {e['iteration']:.1f} | {e['iteration_decode']:.1f} | "
            f"{e['iteration_prefill']:.1f} | {e['iteration_mixed']:.1f} | {e['iteration_p95']:.1f} |")
    return "\n".join(rows) + "\n"


def cross_check(data: Path) -> str:
    """Achieved decode KV bandwidth in the Vidur reference and in LLMServingSim's RTX PRO 6000 profile."""
    ref = Attention.load(data)
    vidur = 128 * 4032 * 2 * 4 * 128 * 2 / (ref.dec_t[-1, -1])  # bytes of K and V read / seconds
    df = pd.read_csv(data / "profiles/llmservingsim/RTXPRO6000/meta-llama/Llama-3.1-8B/bf16/tp1/attention.csv")
    row = df[(df.prefill_chunk == 0) & (df.n_decode == 256)].sort_values("kv_decode").iloc[-1]
    lss = 256 * row.kv_decode * 2 * 8 * 128 * 2 / (row.time_us * 1e-6)
    return (f"Decode-attention cross-check: Vidur A100 reference (128 seqs x 4032 tokens, 4 KV heads/GPU) reads KV at "
            f"{vidur / 1e12:.2f} TB/s ({vidur / (A100[1] * 1e9):.0%} of 2.04 TB/s); LLMServingSim RTX PRO 6000 "
            f"Llama-3.1-8B (256 x {row.kv_decode:.0f}, 8 KV heads) at {lss / 1e12:.2f} TB/s "
            f"({lss / 1.792e12:.0%} of 1.79 TB/s).\n")


def write_yamls(fits: dict[str, dict], out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, payload in fits.items():
        text = yaml.safe_dump(payload, sort_keys=False, width=10_000)
        (out_dir / f"{name}.yaml").write_text("# generated by python -m runtime.sim.fit; do not edit\n" + text)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=REPO_ROOT / ".." / "shared" / "data")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "conf" / "cost_model")
    parser.add_argument("--report", type=Path, default=REPO_ROOT / "bench" / "results" / "cost_model_fit.md")
    args = parser.parse_args(argv)
    fits = fit_all(args.data_dir)
    write_yamls(fits, args.out)
    text = ("MAPE in %, against the interpolated operator profiles (see runtime/sim/fit.py)\n\n" + report(fits)
            + "\n" + cross_check(args.data_dir))
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
