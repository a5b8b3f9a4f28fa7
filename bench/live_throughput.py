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
import gc
import os
import platform
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
for path in (REPO_ROOT, REPO_ROOT / "bench"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from hf_generate import agreement, hf_model, run_hf  # noqa: E402
from live_throughput_report import (Roofline, machine_text, plot, repo_relative, roofline_markdown,  # noqa: E402
                                    roofline_rows, roofline_table, section_markdown, summary_markdown)
from runtime.core.run_log import atomic_write  # noqa: E402

CONF_DIR = REPO_ROOT / "conf"
DEFAULT_OUT = REPO_ROOT / "bench" / "results" / "live_throughput"
DEFAULT_MD = REPO_ROOT / "bench" / "results" / "live_throughput.md"
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
        default_out = Path(args.out).resolve() == DEFAULT_OUT.resolve()
        args.md = str(DEFAULT_MD if default_out else Path(args.out) / "section.md")
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


# Machine and command -----------------------------------------------------------------------------------------------
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


def command_line(argv: list[str]) -> str:
    return ".venv/bin/python bench/live_throughput.py" + ("" if not argv else " " + shlex.join(argv))


# Main --------------------------------------------------------------------------------------------------------------
@dataclass
class Setup:
    """What ``main`` settles before running anything: the options, device, dtype, output directory, machine and the
    roofline's hardware (``hw_name``, ``bandwidth`` GB/s, ``peak`` TFLOP/s; ``None`` when unknown)."""
    args: argparse.Namespace
    argv: list[str]
    device: torch.device
    dtype: torch.dtype
    out: Path
    info: dict
    hw_name: str | None
    bandwidth: float | None
    peak: float | None

    @property
    def device_name(self) -> str:
        return str(self.device)

    @property
    def dtype_name(self) -> str:
        return str(self.dtype).removeprefix("torch.")

    @property
    def progress(self) -> bool:
        return not self.args.no_progress


def prepare(argv: list[str]) -> Setup:
    args = parse_args(argv)
    os.environ.setdefault("WANDB_MODE", "disabled")
    from transformers.utils import logging as hf_logging

    from runtime.live.device import resolve_device, resolve_dtype

    hf_logging.set_verbosity_error()
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.hf_batch_sizes is None:
        args.hf_batch_sizes = [8, 16, 32] if device.type == "cpu" else [8, 16, 32, 64, 128]
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
    return Setup(args, argv, device, dtype, out, info, hw_name, bandwidth, peak)


def run_ours_all(setup: Setup) -> tuple[list[dict], object, object, dict]:
    """Our runtime, one run per scheduler and repeat. Returns the runs, the model spec, the workload (checked to be
    the same requests for every scheduler) and the weights for the HF baseline."""
    runs: list[dict] = []
    spec = workload = state_dict = None
    for name in setup.args.schedulers:
        for rep in range(setup.args.repeats):
            run = run_ours(setup.args, name, setup.device_name, setup.dtype_name, setup.progress)
            run["repeat"] = rep
            runs.append(run)
            executor, run_workload = run.pop("_executor"), run.pop("_workload")
            if spec is None:
                spec, workload = executor.spec, run_workload
                state_dict = checked_weights(executor, setup)
            elif not (np.array_equal(workload.num_prompt_tokens, run_workload.num_prompt_tokens)
                      and np.array_equal(workload.num_output_tokens, run_workload.num_output_tokens)):
                raise RuntimeError(f"scheduler {name} got different requests")
            del executor
            gc.collect()
            if setup.device.type == "cuda":
                torch.cuda.empty_cache()
            print(f"{run['system']}: {run['useful_output_tokens']:,} output tokens in {run['wall_s']:.2f} s -> "
                  f"{run['output_tok_per_s']:,.0f} tok/s ({run['steps']:,} steps)", flush=True)
    return runs, spec, workload, state_dict


def checked_weights(executor, setup: Setup) -> dict:
    """A copy of the executor's weights, which the HF baseline gets: our build_model with the run's seed (checked
    equal, so the baseline's weights are reproducible from the seed alone)."""
    from runtime.live.executor import build_model

    reference = build_model(executor.spec, device=setup.device, dtype=setup.dtype, seed=setup.args.seed).state_dict()
    state_dict = executor.model.state_dict()
    if set(state_dict) != set(reference) or not all(torch.equal(state_dict[k], reference[k]) for k in state_dict):
        raise RuntimeError("build_model(seed) does not reproduce the executor's weights")
    return {k: v.clone() for k, v in state_dict.items()}


def hf_requests(seed: int, spec, workload) -> tuple[list[np.ndarray], np.ndarray]:
    """The same requests for HF: prompts by request id, output lengths from the workload."""
    from runtime.live.tokens import synthetic_prompt

    prompts = [synthetic_prompt(seed, f"r{i}", 0, int(p), spec.vocab_size)
               for i, p in enumerate(workload.num_prompt_tokens)]
    return prompts, workload.num_output_tokens.astype(np.int64)


def run_hf_all(setup: Setup, spec, state_dict: dict, prompts: list[np.ndarray], out_lens: np.ndarray) -> list[dict]:
    """HF ``generate``, one run per batch size and repeat, after an untimed warm-up."""
    model = hf_model(spec, state_dict, setup.device, setup.dtype)
    # Warm-up: one small batch, not timed.
    warm = min(2, len(prompts))
    run_hf(model, prompts[:warm], np.minimum(out_lens[:warm], 2), warm, setup.device, False)
    runs = []
    for b in setup.args.hf_batch_sizes:
        for rep in range(setup.args.repeats):
            run = run_hf(model, prompts, out_lens, b, setup.device, setup.progress)
            run["repeat"] = rep
            runs.append(run)
            print(f"{run['system']}: {run['useful_output_tokens']:,} useful ({run['padded_output_tokens']:,} padded) "
                  f"output tokens in {run['wall_s']:.2f} s -> {run['output_tok_per_s']:,.0f} tok/s", flush=True)
    return runs


def add_agreement(runs: list[dict]) -> dict:
    """Greedy agreement of every run with the HF run of the smallest batch (least padding), which it returns."""
    hf_ref = min((r for r in runs if r["kind"] == "hf"), key=lambda r: r["hf_batch_size"])
    for run in runs:
        run["exact_match_requests"], run["matching_prefix_tokens"] = agreement(run["_outputs"], hf_ref["_outputs"])
    return hf_ref


def summarize(runs: list[dict], out: Path) -> tuple[pd.DataFrame, pd.DataFrame, list[dict]]:
    """``runs.csv`` (every run) and ``summary.csv`` (the best of the repeats per system, in run order, with the
    speedup over the best HF figure); returns both frames and the best runs."""
    frame = pd.DataFrame([{k: v for k, v in r.items() if not k.startswith("_")} for r in runs])
    atomic_write(out / "runs.csv", lambda p: frame.to_csv(p, index=False))
    best = frame.loc[frame.groupby("system", sort=False).output_tok_per_s.idxmax()]
    best = best.set_index("system").loc[list(dict.fromkeys(frame.system))].reset_index()
    best["speedup_vs_best_hf"] = best.output_tok_per_s / best[best.kind == "hf"].output_tok_per_s.max()
    atomic_write(out / "summary.csv", lambda p: best.to_csv(p, index=False))
    best_runs = [next(r for r in runs if r["system"] == s and r["repeat"] == rep)
                 for s, rep in zip(best.system, best.repeat)]
    return frame, best, best_runs


def write_roofline(setup: Setup, spec, best_runs: list[dict]) -> tuple[Roofline | None, pd.DataFrame]:
    """``roofline.csv``, when the hardware's bandwidth and peak are known."""
    if not (setup.bandwidth and setup.peak):
        return None, pd.DataFrame()
    element = torch.empty((), dtype=setup.dtype).element_size()
    roof = Roofline(spec, element, float(setup.bandwidth), float(setup.peak))
    roof_df = roofline_rows(best_runs, roof)
    atomic_write(setup.out / "roofline.csv", lambda p: roof_df.to_csv(p, index=False))
    return roof, roof_df


def write_steps(best_runs: list[dict], out: Path) -> None:
    """``steps.csv``: the per-step records of our best runs."""
    steps_all = []
    for r in best_runs:
        if r["kind"] == "ours":
            steps = r["_steps"].copy()
            steps.insert(0, "system", r["system"])
            steps_all.append(steps)
    if steps_all:
        steps = pd.concat(steps_all, ignore_index=True)
        atomic_write(out / "steps.csv", lambda p: steps.to_csv(p, index=False))


def write_report(setup: Setup, spec, workload, best: pd.DataFrame, best_runs: list[dict], roof: Roofline | None,
                 roof_df: pd.DataFrame, hf_ref: dict) -> str:
    """``throughput.png``, ``summary.md`` and the section (``--md``); returns the summary's Markdown."""
    args = setup.args
    title = (f"{spec.name}, {args.workload} x {args.num_requests} requests, {setup.device_name} {setup.dtype_name}, "
             f"torch threads: {setup.info['threads']}")
    plot(best, {r["system"]: r["_steps"] for r in best_runs if r["kind"] == "ours"}, roof, setup.out / "throughput.png",
         title)
    summary_md = summary_markdown(best, spec, workload, args, setup.device_name, setup.dtype_name)
    atomic_write(setup.out / "summary.md", lambda p: p.write_text(summary_md + "\n"))
    section = section_markdown(summary_md, roofline_markdown(roof, roof_df, setup.hw_name), best, hf_ref["system"],
                               machine_text(setup.info), command_line(setup.argv), setup.out)
    Path(args.md).parent.mkdir(parents=True, exist_ok=True)
    atomic_write(Path(args.md), lambda p: p.write_text(section))
    return summary_md


def main(argv: list[str] | None = None) -> dict:
    setup = prepare(list(sys.argv[1:] if argv is None else argv))
    runs, spec, workload, state_dict = run_ours_all(setup)
    prompts, out_lens = hf_requests(setup.args.seed, spec, workload)
    runs += run_hf_all(setup, spec, state_dict, prompts, out_lens)
    hf_ref = add_agreement(runs)
    frame, best, best_runs = summarize(runs, setup.out)
    roof, roof_df = write_roofline(setup, spec, best_runs)
    write_steps(best_runs, setup.out)
    summary_md = write_report(setup, spec, workload, best, best_runs, roof, roof_df, hf_ref)
    print()
    print(summary_md)
    if roof is not None:
        print()
        print(roofline_table(roof_df))
    print(f"\nwritten {repo_relative(setup.out)}/ and {repo_relative(Path(setup.args.md))}")
    return {"summary": best, "runs": frame, "roofline": roof_df, "outputs": {r["system"]: r["_outputs"] for r in runs},
            "requested_output_tokens": int(out_lens.sum()), "out": setup.out, "md": Path(setup.args.md)}


if __name__ == "__main__":
    main()
