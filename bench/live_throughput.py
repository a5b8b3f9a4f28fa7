"""Live runtime vs Hugging Face ``generate``: offline output-token throughput on one device.

Our runtime: the Engine with a scheduler (continuous batching; ``sarathi`` and ``vllm`` by default) driving the
``LiveExecutor`` with a ``WallClock``. Every request is available at time 0 (``--arrival-rate R`` makes them
arrive as a Poisson stream at R req/s instead), so this is an offline throughput setting. The baseline is
``transformers.LlamaForCausalLM.generate`` on static batches of the same requests:

* same model shape and the SAME weights (our ``build_model`` with the run's seed, loaded into HF by name; the
  script checks the tensors are identical to the executor's), same device, dtype and torch thread count;
* same prompts (``runtime.live.tokens.synthetic_prompt`` of each ``req_id``), same output lengths: HF runs each
  static batch to its longest request's output length (``min_new_tokens = max_new_tokens``, EOS disabled), left
  padding with attention masks, greedy, ``use_cache=True``; batches of ``B`` requests in arrival order;
* HF throughput counts only each request's own output tokens (the useful work, the same count as ours); the
  padded count (``B x longest`` per batch) is reported beside it.

The HF batch size is swept (``--hf-batch-sizes``) and the best is the baseline; the target is our runtime at
>= 2x it. Both systems' first forwards are warm-up, not timed (``runtime.warmup_steps`` and one small
``generate``). The greedy outputs of both are compared token by token (agreement is reported, not asserted:
float reductions in different orders can flip a near-tie).

Per-iteration latency against the roofline: for each of our steps (and each modelled HF step), bytes moved =
weights + KV read (cached context) + KV written, FLOPs = 2 x tokens x layer weights + 2 x sampled rows x LM head
+ attention; roofline = max(bytes / bandwidth, FLOPs / peak). Bandwidth and peak come from
``conf/hardware/<--hardware>.yaml`` (``cpu`` on a CPU: nominal figures) or ``--mem-bandwidth-gbps`` /
``--peak-tflops``.

Outputs (``--out``, default ``bench/results/live_throughput/``): ``runs.csv`` (one row per system and repeat),
``summary.csv`` / ``summary.md`` (best of the repeats), ``roofline.csv``, ``steps.csv`` (our per-step records),
``throughput.png``, and ``--md`` (default ``bench/results/live_throughput.md``): a BENCHMARKS.md-ready section.

    .venv/bin/python bench/live_throughput.py                          # llama_15m, 128 requests, CPU
    .venv/bin/python bench/live_throughput.py --device cuda --hardware h100_80g --num-requests 1024
    .venv/bin/python bench/live_throughput.py --quick --out /tmp/lt     # tiny model, 12 requests (smoke test)
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import gc
import math
import os
import platform
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

CONF_DIR = REPO_ROOT / "conf"
DEFAULT_OUT = REPO_ROOT / "bench" / "results" / "live_throughput"
DEFAULT_MD = REPO_ROOT / "bench" / "results" / "live_throughput.md"
TARGET_SPEEDUP = 2.0
# torch.cuda.get_device_name substring -> conf/hardware/<name>.yaml
_GPU_HARDWARE = {"H100": "h100_80g", "A100": "a100_80g"}


# Configuration -----------------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="smoke test: model=tiny, 12 requests, HF batch sizes 4,8")
    p.add_argument("--model", default=None, help="conf/model/<name>.yaml (default llama_15m; tiny with --quick)")
    p.add_argument("--workload", default="live_small", help="conf/workload/<name>.yaml (lengths)")
    p.add_argument("--num-requests", type=int, default=None, help="default 128 (12 with --quick)")
    p.add_argument("--arrival-rate", type=float, default=None,
                   help="req/s of a Poisson stream (default: every request at time 0)")
    p.add_argument("--schedulers", default="sarathi,vllm", help="comma-separated conf/scheduler names")
    p.add_argument("--max-num-seqs", type=int, default=256, help="our schedulers' max_num_seqs")
    p.add_argument("--token-budget", type=int, default=2048,
                   help="tokens per step: sarathi token_budget and vllm max_num_batched_tokens (vllm without chunked "
                        "prefill needs >= the model's max_model_len)")
    p.add_argument("--hf-batch-sizes", default=None,
                   help="comma-separated (default 8,16,32 on CPU, 8,16,32,64,128 on CUDA; 4,8 with --quick)")
    p.add_argument("--device", default="auto", help="auto (cuda if visible), cpu, cuda, cuda:N")
    p.add_argument("--dtype", default="auto", help="auto (bf16 on CUDA, fp32 on CPU), float32, bfloat16, float16")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--seed", type=int, default=0, help="workload, weights and prompt seed")
    p.add_argument("--repeats", type=int, default=1, help="timed runs per system; the best is reported")
    p.add_argument("--hardware", default=None,
                   help="conf/hardware/<name>.yaml for the roofline (default: cpu on CPU, guessed from the GPU name)")
    p.add_argument("--mem-bandwidth-gbps", type=float, default=None, help="override the hardware's GB/s")
    p.add_argument("--peak-tflops", type=float, default=None, help="override the hardware's peak TFLOP/s")
    p.add_argument("--out", default=str(DEFAULT_OUT), help="directory for the CSVs, summary.md and throughput.png")
    p.add_argument("--md", default=None, help=f"BENCHMARKS section (default {DEFAULT_MD.relative_to(REPO_ROOT)}; "
                                               "<out>/section.md when --out is given)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    args.model = args.model or ("tiny" if args.quick else "llama_15m")
    args.num_requests = args.num_requests or (12 if args.quick else 128)
    if args.hf_batch_sizes is None:
        args.hf_batch_sizes = "4,8" if args.quick else None
    if args.hf_batch_sizes is not None:
        args.hf_batch_sizes = [int(b) for b in args.hf_batch_sizes.split(",")]
    args.schedulers = [s for s in args.schedulers.split(",") if s]
    if args.md is None:
        args.md = str(DEFAULT_MD if Path(args.out).resolve() == DEFAULT_OUT.resolve() else Path(args.out) / "section.md")
    if args.repeats < 1 or args.num_requests < 1 or (args.hf_batch_sizes and min(args.hf_batch_sizes) < 1):
        p.error("--repeats, --num-requests and HF batch sizes must be >= 1")
    if not args.schedulers:
        p.error("--schedulers: give at least one")
    return args


def compose_cfg(args: argparse.Namespace, scheduler: str, device: str, dtype: str):
    from hydra import compose, initialize_config_dir

    overrides = [
        "runtime=live", f"model={args.model}", f"workload={args.workload}", f"scheduler={scheduler}",
        f"workload.num_requests={args.num_requests}", f"seed={args.seed}", "progress=false",
        f"runtime.device={device}", f"runtime.dtype={dtype}", "kv.swap_space_gb=0",
        f"scheduler.max_num_seqs={args.max_num_seqs}",
    ]
    if args.threads is not None:
        overrides.append(f"runtime.threads={args.threads}")
    if scheduler.startswith("vllm"):
        overrides.append(f"scheduler.max_num_batched_tokens={args.token_budget}")
    else:
        overrides.append(f"scheduler.token_budget={args.token_budget}")
    if args.arrival_rate is not None:
        overrides.append(f"workload.arrival.rate={args.arrival_rate}")
    # The planners need a cost model only for `auto` budgets and SLO references; the analytical one needs no profile.
    if not (CONF_DIR / "cost_model" / f"{args.model}_cpu.yaml").is_file():
        overrides.append("cost_model=roofline")
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        return compose(config_name="config", overrides=overrides)


def load_yaml_spec(group: str, name: str):
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    path = CONF_DIR / group / f"{name}.yaml"
    if not path.is_file():
        raise SystemExit(f"live_throughput: no {path.relative_to(REPO_ROOT)}")
    return instantiate(OmegaConf.load(path))


def offline_workload(workload, slo_classes, arrival_rate):
    """The same requests, every one arriving at time 0 (unless an arrival rate was asked for)."""
    from runtime.sim.workload import Workload

    if arrival_rate is not None:
        return workload
    return Workload(name=workload.name, arrival_time=np.zeros(len(workload)),
                    num_prompt_tokens=workload.num_prompt_tokens, num_output_tokens=workload.num_output_tokens,
                    app_index=workload.app_index, apps=workload.apps, app_slo_classes=workload.app_slo_classes,
                    slo_classes=slo_classes)


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


def hf_batch_steps(prompt_len: int, batch: int, new_tokens: int) -> pd.DataFrame:
    """HF's forwards for one static batch: a padded prefill of ``batch x prompt_len``, then ``new_tokens - 1``
    decodes over the padded cache (the last sampled token is never fed back)."""
    k = np.arange(1, new_tokens)
    ctx = prompt_len + k  # keys a decode reads, its own included
    return pd.DataFrame({
        "tokens": np.r_[batch * prompt_len, np.full(len(k), batch)],
        "sampled": np.full(new_tokens, batch),
        "kv_read_tokens": np.r_[0, batch * (ctx - 1)],
        "attn_pairs": np.r_[batch * prompt_len * (prompt_len + 1) // 2, batch * ctx],
        "decode_batch": np.r_[0, np.full(len(k), batch)],
    })


# Our runtime -------------------------------------------------------------------------------------------------------
@dataclass
class StepRecorder:
    """Wraps ``executor.execute`` and ``build_step_batch`` to record each step's shape and times."""
    rows: list = field(default_factory=list)
    batch_build_s: float = 0.0
    outputs: dict = field(default_factory=dict)

    def wrap(self, executor) -> None:
        import runtime.live.executor as live_executor

        original_execute = executor.execute
        original_build = live_executor.build_step_batch
        recorder = self

        def timed_build(*a, **k):
            t0 = time.perf_counter()
            try:
                return original_build(*a, **k)
            finally:
                recorder.batch_build_s += time.perf_counter() - t0

        def execute(output):
            build_before = recorder.batch_build_s
            result = original_execute(output)
            decode_ctx = output.decode_context_lens
            kv_read = sum(decode_ctx) - len(decode_ctx)  # a decode's own key is written, not read from the cache
            pairs = sum(decode_ctx)
            sampled = len(decode_ctx)
            done = set(output.prefill_done_req_ids)
            for req_id, (c, q) in zip(output.prefill_req_ids, output.prefill_chunks):
                if q:
                    kv_read += q
                pairs += c * q + c * (c + 1) // 2
                sampled += req_id in done
            recorder.rows.append((output.num_prefill_tokens if output.prefill_chunks else 0, len(decode_ctx),
                                  output.total_num_scheduled_tokens, sampled, kv_read, pairs,
                                  max(decode_ctx, default=0), result.step_time,
                                  recorder.batch_build_s - build_before))
            return result

        def drop(req_id, _drop=executor.tokens.drop):
            # Keep each request's sampled tokens (the store drops them when the request finishes).
            recorder.outputs[req_id] = executor.tokens.outputs(req_id)
            _drop(req_id)

        executor.execute = execute
        executor.tokens.drop = drop
        live_executor.build_step_batch = timed_build
        self._restore = lambda: setattr(live_executor, "build_step_batch", original_build)

    def restore(self) -> None:
        self._restore()

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows, columns=["prefill_tokens", "decode_batch", "tokens", "sampled", "kv_read_tokens",
                                                "attn_pairs", "max_decode_context", "step_s", "build_batch_s"])


def run_ours(args, scheduler_name: str, device: str, dtype: str, progress: bool) -> dict:
    from runtime.cli import build
    from runtime.core.clock import WallClock
    from runtime.core.engine import Engine

    cfg = compose_cfg(args, scheduler_name, device, dtype)
    parts = build(cfg)
    executor, scheduler = parts["executor"], parts["scheduler"]
    workload = offline_workload(parts["workload"], parts["slo_classes"], args.arrival_rate)
    recorder = StepRecorder()
    recorder.wrap(executor)
    bar = tqdm(total=len(workload), unit="req", desc=f"ours/{scheduler_name}", leave=False, disable=not progress,
               dynamic_ncols=True)
    try:
        cpu0 = time.process_time()
        result = Engine(scheduler=scheduler, executor=executor, workload=workload, clock=WallClock(),
                        progress=bar).run()
        cpu_s = time.process_time() - cpu0
    finally:
        bar.close()
        recorder.restore()
    for request in result.requests:  # finished in the last step: never dropped
        if request.req_id not in recorder.outputs:
            recorder.outputs[request.req_id] = executor.tokens.outputs(request.req_id)
    steps = recorder.frame()
    requested = int(workload.num_output_tokens.sum())
    produced = int(sum(r.num_output_tokens for r in result.requests))
    sampled = int(sum(len(v) for v in recorder.outputs.values()))
    wall = result.wall_s
    step_sum = float(steps.step_s.sum())
    build_sum = float(steps.build_batch_s.sum())
    prefill_steps = steps.prefill_tokens > 0
    return {
        "system": f"ours/{scheduler_name}",
        "kind": "ours",
        "scheduler": scheduler_name,
        "hf_batch_size": np.nan,
        "num_requests": len(result.requests),
        "num_finished": int(sum(r.is_finished for r in result.requests)),
        "requested_output_tokens": requested,
        "useful_output_tokens": produced,
        "sampled_tokens": sampled,
        "padded_output_tokens": produced,
        "prompt_tokens": int(workload.num_prompt_tokens.sum()),
        "padded_prompt_tokens": int(workload.num_prompt_tokens.sum()),
        "num_preemptions": int(sum(r.num_preemptions for r in result.requests)),
        "wall_s": wall,
        "cpu_s": cpu_s,
        "output_tok_per_s": produced / wall,
        "steps": len(steps),
        "mean_tokens_per_step": float(steps.tokens.mean()),
        "mean_decode_batch": float(steps.decode_batch[steps.decode_batch > 0].mean()) if (steps.decode_batch > 0).any()
        else 0.0,
        "max_num_seqs": getattr(scheduler, "max_num_seqs", args.max_num_seqs),
        "token_budget": scheduler.token_budget,
        # Where the wall time went.
        "executor_s": step_sum,
        "build_batch_s": build_sum,
        "forward_sample_s": step_sum - build_sum,
        "engine_scheduler_s": wall - step_sum,
        "prefill_steps_s": float(steps.step_s[prefill_steps].sum()),
        "decode_only_steps_s": float(steps.step_s[~prefill_steps].sum()),
        "decode_only_steps": int((~prefill_steps).sum()),
        "device": executor.description,
        "_steps": steps,
        "_outputs": recorder.outputs,
        "_executor": executor,
        "_workload": workload,
    }


# Hugging Face ------------------------------------------------------------------------------------------------------
def hf_model(spec, state_dict, device: torch.device, dtype: torch.dtype):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=spec.vocab_size, hidden_size=spec.hidden_size, intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers, num_attention_heads=spec.num_heads, num_key_value_heads=spec.num_kv_heads,
        head_dim=spec.head_dim, max_position_embeddings=spec.max_model_len, rms_norm_eps=spec.rms_norm_eps,
        rope_theta=spec.rope_theta, tie_word_embeddings=spec.tie_word_embeddings, attention_bias=False,
        mlp_bias=False, bos_token_id=None, eos_token_id=None, pad_token_id=0, use_cache=True,
    )
    with torch.device(device):
        model = LlamaForCausalLM(config)  # HF's own init, overwritten below
    model = model.to(dtype)
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    missing = [m for m in missing if not (spec.tie_word_embeddings and m == "lm_head.weight")]
    if missing or unexpected:
        raise RuntimeError(f"HF model: missing {missing}, unexpected {unexpected}")
    if spec.tie_word_embeddings and model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr():
        raise RuntimeError("HF model: lm_head is not tied to embed_tokens")
    # .to(dtype) cast the rotary frequencies too; HF keeps them in fp32 (as our rope_tables does).
    rotary = model.model.rotary_emb
    inv_freq, _ = rotary.compute_default_rope_parameters(config)
    rotary.inv_freq = inv_freq.to(device)
    rotary.original_inv_freq = inv_freq.clone().to(device)
    return model.eval().requires_grad_(False)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def hf_batches(num_requests: int, batch_size: int) -> list[range]:
    return [range(s, min(s + batch_size, num_requests)) for s in range(0, num_requests, batch_size)]


def run_hf(model, prompts: list[np.ndarray], out_lens: np.ndarray, batch_size: int, device: torch.device,
           progress: bool) -> dict:
    from transformers import GenerationConfig

    useful = padded = prompt_tokens = padded_prompt = 0
    outputs: dict[str, list[int]] = {}
    batches = hf_batches(len(prompts), batch_size)
    per_batch = []
    elapsed = 0.0
    cpu0 = time.process_time()
    for idx in tqdm(batches, desc=f"hf/B={batch_size}", unit="batch", leave=False, disable=not progress,
                    dynamic_ncols=True):
        lens = [len(prompts[i]) for i in idx]
        width = max(lens)
        ids = np.zeros((len(idx), width), dtype=np.int64)
        mask = np.zeros((len(idx), width), dtype=np.int64)
        for row, i in enumerate(idx):  # left padding
            ids[row, width - lens[row]:] = prompts[i]
            mask[row, width - lens[row]:] = 1
        new = int(max(out_lens[i] for i in idx))
        input_ids = torch.from_numpy(ids).to(device)
        attention_mask = torch.from_numpy(mask).to(device)
        _sync(device)
        t0 = time.perf_counter()
        gen = GenerationConfig(do_sample=False, num_beams=1, use_cache=True, eos_token_id=None, bos_token_id=None,
                               pad_token_id=0, max_new_tokens=new, min_new_tokens=new)
        out = model.generate(input_ids=input_ids, attention_mask=attention_mask, generation_config=gen)
        out = out.cpu()
        dt_s = time.perf_counter() - t0
        elapsed += dt_s
        generated = out[:, width:]
        if generated.shape[1] != new:
            raise RuntimeError(f"HF generated {generated.shape[1]} tokens for a batch asked for {new}")
        for row, i in enumerate(idx):
            outputs[f"r{i}"] = generated[row, : int(out_lens[i])].tolist()
        useful += int(sum(out_lens[i] for i in idx))
        padded += len(idx) * new
        prompt_tokens += sum(lens)
        padded_prompt += len(idx) * width
        per_batch.append((len(idx), width, new, dt_s))
    cpu_s = time.process_time() - cpu0
    return {
        "system": f"hf/B={batch_size}",
        "kind": "hf",
        "scheduler": "static",
        "hf_batch_size": batch_size,
        "num_requests": len(prompts),
        "num_finished": len(prompts),
        "requested_output_tokens": int(out_lens.sum()),
        "useful_output_tokens": useful,
        "sampled_tokens": int(sum(len(v) for v in outputs.values())),
        "padded_output_tokens": padded,
        "prompt_tokens": prompt_tokens,
        "padded_prompt_tokens": padded_prompt,
        "num_preemptions": 0,
        "wall_s": elapsed,
        "cpu_s": cpu_s,
        "output_tok_per_s": useful / elapsed,
        "steps": int(sum(n for _, _, n, _ in per_batch)),
        "mean_tokens_per_step": np.nan,
        "mean_decode_batch": float(np.mean([b for b, _, _, _ in per_batch])),
        "max_num_seqs": batch_size,
        "token_budget": np.nan,
        "_batches": per_batch,
        "_outputs": outputs,
    }


# Reporting ---------------------------------------------------------------------------------------------------------
def agreement(ours: dict[str, list[int]], hf: dict[str, list[int]]) -> tuple[float, float]:
    """(share of requests with identical outputs, share of output tokens before each request's first mismatch)."""
    same = prefix = total = 0
    for req_id, a in ours.items():
        b = hf.get(req_id, [])
        n = 0
        while n < min(len(a), len(b)) and a[n] == b[n]:
            n += 1
        same += a == b
        prefix += n
        total += len(a)
    return same / max(len(ours), 1), prefix / max(total, 1)


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


def machine_info(device: torch.device, threads: int) -> dict:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(Exception):
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout.splitlines():
            if line.startswith("Model name:"):
                cpu = line.split(":", 1)[1].strip()
    import transformers

    info = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "threads": threads,
        "load_avg_start": f"{os.getloadavg()[0]:.2f}",
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


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
        cap = (f"{int(r.max_num_seqs)} / {int(r.token_budget)}" if r.kind == "ours" else f"static batch {int(r.hf_batch_size)}")
        lines.append(f"| {r.system} | **{r.output_tok_per_s:,.0f}** | {r.speedup_vs_best_hf:.2f}× | {r.wall_s:.2f} | "
                     f"{r.useful_output_tokens / r.cpu_s:,.0f} | {int(r.useful_output_tokens):,} | {int(r.padded_output_tokens):,} | "
                     f"{int(r.padded_prompt_tokens):,} | {int(r.steps):,} | {cap} |")
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
        fig.savefig(path, dpi=120)
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
    fig.savefig(path, dpi=120)
    plt.close(fig)


def command_line(argv: list[str]) -> str:
    return ".venv/bin/python bench/live_throughput.py" + ("" if not argv else " " + shlex.join(argv))


# Main --------------------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    os.environ.setdefault("WANDB_MODE", "disabled")
    from transformers.utils import logging as hf_logging

    from runtime.live.device import resolve_device, resolve_dtype
    from runtime.live.executor import build_model
    from runtime.live.tokens import synthetic_prompt

    hf_logging.set_verbosity_error()
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    device_name = str(device)
    dtype_name = str(dtype).removeprefix("torch.")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.hf_batch_sizes is None:
        args.hf_batch_sizes = [8, 16, 32] if device.type == "cpu" else [8, 16, 32, 64, 128]
    progress = not args.no_progress
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    info = machine_info(device, torch.get_num_threads())

    hw_name = args.hardware
    if hw_name is None:
        if device.type == "cpu":
            hw_name = "cpu"
        else:
            gpu = torch.cuda.get_device_name(device)
            hw_name = next((v for k, v in _GPU_HARDWARE.items() if k in gpu), None)
    hardware = load_yaml_spec("hardware", hw_name) if hw_name else None
    bandwidth = args.mem_bandwidth_gbps or (hardware.hbm_bandwidth_gbps if hardware else None)
    peak = args.peak_tflops or (hardware.peak_tflops if hardware else None)

    # Our runtime, one run per scheduler and repeat.
    runs: list[dict] = []
    spec = workload = state_dict = None
    for name in args.schedulers:
        for rep in range(args.repeats):
            run = run_ours(args, name, device_name, dtype_name, progress)
            run["repeat"] = rep
            runs.append(run)
            executor, run_workload = run.pop("_executor"), run.pop("_workload")
            if spec is None:
                spec, workload = executor.spec, run_workload
                # The HF baseline gets exactly these tensors: our build_model with the run's seed (checked equal).
                reference = build_model(spec, device=device, dtype=dtype, seed=args.seed).state_dict()
                state_dict = executor.model.state_dict()
                if set(state_dict) != set(reference) or not all(torch.equal(state_dict[k], reference[k])
                                                               for k in state_dict):
                    raise RuntimeError("build_model(seed) does not reproduce the executor's weights")
                state_dict = {k: v.clone() for k, v in state_dict.items()}
                del reference
            elif not (np.array_equal(workload.num_prompt_tokens, run_workload.num_prompt_tokens)
                      and np.array_equal(workload.num_output_tokens, run_workload.num_output_tokens)):
                raise RuntimeError(f"scheduler {name} got different requests")
            del executor
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
            print(f"{run['system']}: {run['useful_output_tokens']:,} output tokens in {run['wall_s']:.2f} s -> "
                  f"{run['output_tok_per_s']:,.0f} tok/s ({run['steps']:,} steps)", flush=True)

    # The same requests for HF: prompts by request id, output lengths from the workload.
    prompts = [synthetic_prompt(args.seed, f"r{i}", 0, int(p), spec.vocab_size)
               for i, p in enumerate(workload.num_prompt_tokens)]
    out_lens = workload.num_output_tokens.astype(np.int64)

    model = hf_model(spec, state_dict, device, dtype)
    # Warm-up: one small batch, not timed.
    warm = min(2, len(prompts))
    run_hf(model, prompts[:warm], np.minimum(out_lens[:warm], 2), warm, device, False)
    for b in args.hf_batch_sizes:
        for rep in range(args.repeats):
            run = run_hf(model, prompts, out_lens, b, device, progress)
            run["repeat"] = rep
            runs.append(run)
            print(f"{run['system']}: {run['useful_output_tokens']:,} useful ({run['padded_output_tokens']:,} padded) "
                  f"output tokens in {run['wall_s']:.2f} s -> {run['output_tok_per_s']:,.0f} tok/s", flush=True)

    # Greedy agreement of each of our runs with the HF run of the smallest batch (least padding).
    hf_ref = min((r for r in runs if r["kind"] == "hf"), key=lambda r: r["hf_batch_size"])
    for run in runs:
        run["exact_match_requests"], run["matching_prefix_tokens"] = agreement(run["_outputs"], hf_ref["_outputs"])

    frame = pd.DataFrame([{k: v for k, v in r.items() if not k.startswith("_")} for r in runs])
    frame.to_csv(out / "runs.csv", index=False)
    # Best of the repeats per system, in run order.
    best = frame.loc[frame.groupby("system", sort=False).output_tok_per_s.idxmax()]
    best = best.set_index("system").loc[list(dict.fromkeys(frame.system))].reset_index()
    best_hf = best[best.kind == "hf"].output_tok_per_s.max()
    best_hf_system = best.loc[best[best.kind == "hf"].output_tok_per_s.idxmax(), "system"]
    best["speedup_vs_best_hf"] = best.output_tok_per_s / best_hf
    best.to_csv(out / "summary.csv", index=False)
    best_runs = [next(r for r in runs if r["system"] == s and r["repeat"] == rep)
                 for s, rep in zip(best.system, best.repeat)]

    roof = None
    roof_df = pd.DataFrame()
    if bandwidth and peak:
        element = torch.empty((), dtype=dtype).element_size()
        roof = Roofline(spec, element, float(bandwidth), float(peak))
        roof_df = roofline_rows(best_runs, roof)
        roof_df.to_csv(out / "roofline.csv", index=False)
    steps_all = []
    for r in best_runs:
        if r["kind"] == "ours":
            s = r["_steps"].copy()
            s.insert(0, "system", r["system"])
            steps_all.append(s)
    if steps_all:
        pd.concat(steps_all, ignore_index=True).to_csv(out / "steps.csv", index=False)

    ours_best = best[best.kind == "ours"]
    top = ours_best.loc[ours_best.output_tok_per_s.idxmax()] if not ours_best.empty else None
    title = (f"{spec.name}, {args.workload} x {args.num_requests} requests, {device_name} {dtype_name}, "
             f"torch threads: {info['threads']}")
    plot(best, {r["system"]: r["_steps"] for r in best_runs if r["kind"] == "ours"}, roof, out / "throughput.png",
         title)

    stamp = dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    cmd = command_line(argv)
    verdict = "–"
    if top is not None:
        verdict = (f"{top.system}: **{top.speedup_vs_best_hf:.2f}×** the best HF figure ({best_hf_system}, "
                   f"{best_hf:,.0f} tok/s); target ≥ {TARGET_SPEEDUP:g}× — "
                   + ("**met**" if top.speedup_vs_best_hf >= TARGET_SPEEDUP else "**not met**"))
    machine = (f"{info['cpu']}, {info['cores']} cores" + (f", GPU {info['gpu']}" if "gpu" in info else "")
               + f"; torch {info['torch']}, transformers {info['transformers']}, Python {info['python']}; "
               f"torch threads: {info['threads']}; load average (1 min) {info['load_avg_start']} at start, "
               f"{os.getloadavg()[0]:.2f} at end")
    requested = int(out_lens.sum())
    summary_md = "\n".join([
        f"Model `{spec.name}` ({spec.expected_num_params / 1e6:.1f}M parameters, random weights from seed {args.seed}), "
        f"workload `{args.workload}` lengths, {args.num_requests} requests "
        + ("all at time 0" if args.arrival_rate is None else f"arriving at {args.arrival_rate:g} req/s")
        + f" ({int(workload.num_prompt_tokens.sum()):,} prompt tokens, {requested:,} output tokens; "
        f"output lengths mean {out_lens.mean():.1f}, max {out_lens.max()}), device {device_name}, {dtype_name}.",
        "",
        summary_table(best),
        "",
        verdict,
        "",
        "tok per CPU-s: useful output tokens per CPU-second of this process (all threads, spin-waits included); "
        "with one thread it leaves out time other tenants of a shared machine took.",
        "",
        "Time breakdown of our runs (engine + scheduler = wall − Σ executor step time):",
        "",
        breakdown_table(best),
    ])
    (out / "summary.md").write_text(summary_md + "\n")
    agree = "; ".join(f"{r.system}: {r.exact_match_requests:.0%} of requests identical, "
                      f"{r.matching_prefix_tokens:.0%} of tokens before the first mismatch"
                      for _, r in best[best.kind == "ours"].iterrows())
    roof_md = ("\nNo roofline: no conf/hardware file for this device (pass --hardware, or --mem-bandwidth-gbps "
               "and --peak-tflops).")
    if roof is not None:
        roof_md = "\n".join([
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
    section = "\n".join([
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
        f"Greedy agreement with {hf_ref['system']}: {agree}.",
        "",
        f"Files: `{_rel(out)}/` (runs.csv, summary.csv, roofline.csv, steps.csv, throughput.png).",
        "",
    ])
    Path(args.md).parent.mkdir(parents=True, exist_ok=True)
    Path(args.md).write_text(section)
    print()
    print(summary_md)
    if roof is not None:
        print()
        print(roofline_table(roof_df))
    print(f"\nwritten {_rel(out)}/ and {_rel(Path(args.md))}")
    return {"summary": best, "runs": frame, "roofline": roof_df, "outputs": {r["system"]: r["_outputs"] for r in runs},
            "requested_output_tokens": requested, "out": out, "md": Path(args.md)}


def _rel(path: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


if __name__ == "__main__":
    main()
