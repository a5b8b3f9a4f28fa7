"""The ``accelgen`` command: a Hydra app that builds one experiment from ``conf/`` and runs it.

``accelgen scheduler=sarathi workload=azure_conv`` runs one experiment and prints its summary;
``accelgen -m scheduler=vllm,orca,sarathi`` runs a sweep and prints a comparison table at its end
(``runtime.report.ComparisonCallback``). This is the one module that imports from every package: everything
else is connected through ``_target_``.
"""
from __future__ import annotations

import json
import sys
import time
import warnings
from contextlib import nullcontext
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import InterpolationResolutionError
from tqdm.auto import tqdm

from runtime.core.clock import VirtualClock, WallClock
from runtime.core.engine import Engine
from runtime.core.errors import AccelgenError, ConfigError
from runtime.core.kv_cache import BlockManager
from runtime.core.metrics import kv_activity, requests_frame, summarise
from runtime.core.result_stream import open_results
from runtime.core.run_log import write_json, write_run_outputs
from runtime.live.heap import frozen_heap  # gc only: no torch for simulated runs
from runtime.report import FAILED_FILE
from runtime import resume
from runtime.config_schema import validate_config
from runtime.core.slo import resolve_slo_classes
from runtime.sim.capacity import num_kv_blocks
from runtime.sim.transfer import PCIeTransferModel, num_swap_blocks

REPO_ROOT = Path(__file__).resolve().parents[1]
# An absolute path: Hydra would otherwise look for a `conf` package when the project is installed in editable mode.
CONF_DIR = str(REPO_ROOT / "conf")
SUMMARY_KEYS_SHOWN = (
    "scheduler", "workload", "num_requests", "num_finished", "num_rejected", "slo_attainment",
    "slo_attainment_by_class", "goodput_rps", "throughput_rps", "throughput_tps", "ttft_p50_s", "ttft_p99_s",
    "tbt_p50_s", "tbt_p99_s", "jct_mean_s", "num_preemptions", "num_swaps", "num_iterations", "wall_s",
)


def _load_rate(load, reference, model_name, workload_name) -> float:
    """``${load_rate:load,reference,model,workload}``: an arrival rate as a multiple of a reference capacity (the
    paper experiments, conf/experiment/paper_*.yaml), with an error naming the missing reference."""
    if reference is None:
        raise ConfigError(
            f"no reference rate for model={model_name} workload={workload_name}: add "
            f"paper.reference_rate.{model_name}.{workload_name}=<req/s> (the best baseline's capacity, from "
            f"`accelgen task=capacity model={model_name} workload={workload_name} scheduler=<baseline>`)")
    return float(load) * float(reference)


if not OmegaConf.has_resolver("load_rate"):
    OmegaConf.register_new_resolver("load_rate", _load_rate)


def fill_paths(cfg: DictConfig) -> None:
    """Default ``paths.shared_data`` to ``../shared/data`` beside the repo."""
    with open_dict(cfg):
        if cfg.paths.get("shared_data") in (None, ""):
            cfg.paths.shared_data = str((REPO_ROOT.parent / "shared" / "data").resolve())


def instantiate_node(node, **kwargs):
    """``hydra.utils.instantiate`` that lets our own named errors through instead of Hydra's wrapper."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as error:
        cause = error.__cause__
        if isinstance(cause, AccelgenError):
            raise cause from None
        raise


def build(cfg: DictConfig, *, noise_seed: int | None = None) -> dict:
    """Instantiate every object of an experiment; returns them by name (used by ``run`` and by notebooks).

    ``noise_seed`` seeds the cost model's latency noise instead of ``cfg.seed`` (a cluster's replicas).
    """
    fill_paths(cfg)
    validate_config(cfg)  # every key known, typed and in range (runtime/config_schema.py)
    model = instantiate_node(cfg.model)
    hardware = instantiate_node(cfg.hardware)
    live = is_live(cfg)
    memory_plan = None
    if live:
        # Before anything else: a model or KV cache that cannot fit the device is the first thing to report.
        num_blocks, swap_blocks, memory_plan = live_memory_plan(cfg, model)
    if cfg.get("cost_model") is None:
        raise ConfigError(
            f"no cost model for model={model.name} on hardware={hardware.name} (conf/cost_model/{model.name}_"
            f"{hardware.name}.yaml): fit one on this device with `accelgen-profile model={model.name} "
            f"hardware={hardware.name}`, or pass cost_model=roofline (analytical) or an existing cost_model=<name>")
    # The run's seed drives the latency noise too (cost_model.noise_cv), so seed replicates are independent.
    cost_model = instantiate_node(cfg.cost_model, seed=cfg.seed if noise_seed is None else noise_seed)
    # Schedulers plan with the noise-free predictor; only simulated time (the executor) sees latency.noise_cv.
    planner_model = cost_model.deterministic() if hasattr(cost_model, "deterministic") else cost_model
    slo_classes, slo_refs = resolve_slo_classes(
        planner_model, OmegaConf.to_container(cfg.slo.classes, resolve=True), scale=cfg.slo.scale,
        reference=OmegaConf.to_container(cfg.slo.reference, resolve=True),
    )
    kv = cfg.kv
    if not live:
        num_blocks = kv.num_blocks
        if num_blocks is None:
            num_blocks = num_kv_blocks(model=model, hardware=hardware, block_size=kv.block_size,
                                       gpu_memory_utilization=kv.gpu_memory_utilization)
        num_blocks = _scaled_blocks(num_blocks, kv.num_blocks_scale)
        swap_blocks = kv.get("swap_blocks")
        if swap_blocks is None:
            swap_blocks = num_swap_blocks(model=model, hardware=hardware, block_size=kv.block_size,
                                          swap_space_gb=kv.get("swap_space_gb", 4.0))
    block_manager = BlockManager(num_blocks=num_blocks, block_size=kv.block_size, watermark=kv.watermark,
                                 num_swap_blocks=swap_blocks)
    kv_transfer = PCIeTransferModel.for_replica(model=model, hardware=hardware, block_size=kv.block_size,
                                                efficiency=kv.get("pcie_efficiency", 0.8),
                                                latency_s=kv.get("swap_latency_s", 1e-3))
    workload = instantiate_node(cfg.workload, slo_classes=slo_classes, max_model_len=model.max_model_len, seed=cfg.seed)
    scheduler = instantiate_node(
        cfg.scheduler, block_manager=block_manager, cost_model=planner_model, slo_classes=slo_classes,
        max_model_len=model.max_model_len, kv_transfer=kv_transfer,
    )
    calibrate = getattr(scheduler, "calibrate", None)
    if calibrate is not None:
        # Learnt output-length predictors (CacheOPT) fit on the workload's training split, never on the replay.
        calibrate(workload.training_frame() if hasattr(workload, "training_frame") else None)
    if cfg.get("oracle") is not None and cfg.oracle.gap_accounting:
        scheduler = _gap_accountant(cfg, scheduler, planner_model)
    if live:
        # Partial, then called: Hydra would turn the dataclass arguments (ModelSpec, MemoryPlan) into DictConfigs.
        executor = instantiate_node(cfg.runtime, _partial_=True)(model=model, block_manager=block_manager,
                                                                 memory_plan=memory_plan)
    else:
        executor = instantiate_node(cfg.runtime, cost_model=cost_model, kv_transfer=kv_transfer)
    return dict(model=model, hardware=hardware, cost_model=cost_model, slo_classes=slo_classes, slo_refs=slo_refs,
                block_manager=block_manager, kv_transfer=kv_transfer, workload=workload, scheduler=scheduler,
                executor=executor)


def is_live(cfg: DictConfig) -> bool:
    """Whether ``runtime=`` selects the live PyTorch runtime (anything under ``runtime.live``)."""
    return str(cfg.runtime.get("_target_", "")).startswith("runtime.live.")


def _scaled_blocks(num_blocks: int, scale: float) -> int:
    scaled = int(num_blocks * scale)
    if scaled < 1:
        raise ConfigError(f"kv.num_blocks resolves to {scaled} blocks (kv.num_blocks_scale={scale})")
    return scaled


def live_memory_plan(cfg: DictConfig, model):
    """KV and swap blocks the live device can hold, checked against its free memory (``DeviceMemoryError``)."""
    from runtime.live.device import plan_memory, resolve_device, resolve_dtype

    kv, rt = cfg.kv, cfg.runtime
    device = resolve_device(rt.get("device", "auto"))
    dtype = resolve_dtype(rt.get("dtype", "auto"), device)
    common = dict(device=device, dtype=dtype, block_size=kv.block_size, swap_space_gb=kv.get("swap_space_gb", 4.0),
                  num_swap_blocks=kv.get("swap_blocks"), memory_utilization=rt.get("memory_utilization", 0.9),
                  cpu_kv_cache_gb=rt.get("cpu_kv_cache_gb", 1.0))
    num_blocks = kv.num_blocks
    if num_blocks is None:
        num_blocks = plan_memory(model, num_blocks=None, **common).num_blocks
    num_blocks = _scaled_blocks(num_blocks, kv.num_blocks_scale)
    plan = plan_memory(model, num_blocks=num_blocks, **common)
    return plan.num_blocks, plan.num_swap_blocks, plan


def _gap_accountant(cfg: DictConfig, scheduler, cost_model):
    """Wrap the run's scheduler so every step is also solved by the Oracle (``oracle.gap_accounting``)."""
    from solvers.gap import GapAccountant

    o = cfg.oracle
    return GapAccountant(
        scheduler, cost_model=cost_model, backend=o.backend, time_limit_s=o.time_limit_s, mip_gap=o.mip_gap,
        every=o.gap_every, bound_prefill_iterations=cfg.slo.bound_prefill_iterations, max_candidates=o.max_candidates,
        c_done=o.c_done, eta=o.eta, eps=o.eps, urgency_theta=o.urgency_theta, margin=o.margin, chunk_cap=o.chunk_cap,
        max_tokens=o.max_tokens)


def run(cfg: DictConfig, output_dir: Path | None, *, config_hash: str | None = None) -> dict:
    """Run one experiment, write its outputs to ``output_dir`` (if given) and return its summary.

    ``config_hash`` (``runtime.resume``) goes into the summary, so a resumed sweep can find the result."""
    if cfg.get("cluster") is not None and cfg.cluster.get("num_replicas") != 1:
        from runtime.cluster.run import run_cluster  # N replicas behind a router; imported here (it imports cli)

        return run_cluster(cfg, output_dir, config_hash=config_hash)
    t0 = time.perf_counter()
    parts = build(cfg)
    scheduler, workload = parts["scheduler"], parts["workload"]
    scheduler_name = cfg.scheduler.get("name") or type(scheduler).__name__
    metrics_cfg, results_cfg = cfg.metrics, cfg.get("results") or {}
    # results.mode=stream|summary: rows streamed to disk (or only summarised) as requests finish (result_stream).
    sink, stream_log = open_results(
        results_cfg.get("mode", "full"), output_dir, iteration_every=results_cfg.get("iteration_every", 1),
        batch_size=results_cfg.get("batch_size", 4096), tbt_mode=metrics_cfg.tbt_mode,
        tbt_percentile=metrics_cfg.tbt_percentile, bound_prefill_iterations=cfg.slo.bound_prefill_iterations,
        warmup_s=metrics_cfg.warmup_s)
    bar = tqdm(total=len(workload), unit="req", desc=scheduler_name, mininterval=0.5, leave=False,
               disable=not cfg.progress, dynamic_ncols=True)
    try:
        executor = parts["executor"]
        # The live runtime's steps take real time: the clock is the wall clock (idle gaps skipped), and the
        # garbage collector must not walk the start-up heap inside a step (runtime.live.heap).
        wall = getattr(executor, "wall_clock", False)
        clock = WallClock() if wall else VirtualClock()
        with frozen_heap() if wall else nullcontext():
            result = Engine(scheduler=scheduler, executor=executor, workload=workload, clock=clock, progress=bar,
                            results=sink, iteration_log=stream_log).run()
    except BaseException:
        for part in (sink, stream_log):
            if part is not None:
                part.abort()  # no half-written parquet file is left behind
        raise
    finally:
        bar.close()
    if sink is None:
        frame = requests_frame(result.requests, tbt_mode=metrics_cfg.tbt_mode,
                               tbt_percentile=metrics_cfg.tbt_percentile,
                               bound_prefill_iterations=cfg.slo.bound_prefill_iterations)
        tbt_gaps = None
    else:
        frame, tbt_gaps = sink.finish()  # the summary's columns only, and the pooled TBT gaps as a histogram
    summary = {
        **run_description(cfg, parts, frame),
        **summarise(frame, result.requests, warmup_s=metrics_cfg.warmup_s, tbt_gaps=tbt_gaps),
        "num_iterations": len(result.iterations),
        "wall_s": time.perf_counter() - t0,
        "config_hash": config_hash,
    }
    if stream_log is None:
        iterations = result.iterations.to_frame()
        summary.update(kv_activity(iterations))
    else:
        iterations = None  # already streamed (or not kept)
        summary.update(stream_log.finish())
    # Every block comes back when every request has finished; anything else is a leak the run must show.
    bm = parts["block_manager"]
    summary["kv_blocks_in_use_at_end"] = bm.num_used_blocks
    summary["kv_swapped_blocks_at_end"] = bm.num_swap_blocks - bm.num_free_cpu_blocks
    # Schedulers with their own per-step records (the Oracle's decisions, gap accounting) add tables and keys.
    artifacts = getattr(scheduler, "run_artifacts", None)
    tables = {}
    if artifacts is not None:
        tables, extra = artifacts()
        summary.update(extra)
    if output_dir is not None:
        write_run_outputs(output_dir, requests=frame if sink is None else None, iterations=iterations,
                          summary=summary, tables=tables)
    return summary


def run_description(cfg: DictConfig, parts: dict, frame) -> dict:
    """The keys every summary starts with (single engine and cluster alike): what ran, on what, at which load and
    against which SLOs."""
    scheduler = parts["scheduler"]
    return {
        "scheduler": cfg.scheduler.get("name") or type(scheduler).__name__,
        "workload": cfg.workload.get("name", "workload"),
        "seed": cfg.seed,
        "model": parts["model"].name,
        "hardware": parts["hardware"].name,
        "token_budget": scheduler.token_budget,
        "kv_num_blocks": parts["block_manager"].num_blocks,
        "kv_swap_blocks": parts["block_manager"].num_swap_blocks,
        "preemption_mode": getattr(scheduler, "preemption_mode", None),
        **arrival_rates(cfg, frame),
        "runtime": "live" if is_live(cfg) else "sim",
        "device": getattr(parts["executor"], "description", "simulated"),
        "slo_classes_s": {n: {"ttft_slo_s": c.ttft_slo_s, "tbt_slo_s": c.tbt_slo_s}
                          for n, c in parts["slo_classes"].items()},
        "slo_reference_s": parts["slo_refs"],
    }


def arrival_rates(cfg: DictConfig, frame) -> dict:
    """The run's load: ``arrival_rate`` as configured (the x axis of a rate sweep: ``workload.arrival.rate``, or a
    trace's ``target_rate``; the measured rate when neither is set) and ``offered_rate_rps`` as measured,
    ``(n - 1) / (last arrival - first arrival)``."""
    arrivals = frame["arrival_time"]
    span = float(arrivals.max() - arrivals.min()) if len(arrivals) > 1 else 0.0
    offered = (len(arrivals) - 1) / span if span > 0 else None
    workload = cfg.workload
    configured = OmegaConf.select(workload, "arrival.rate", default=None)
    if configured is None:
        configured = workload.get("target_rate")
    return {"arrival_rate": float(configured) if configured is not None else offered, "offered_rate_rps": offered}


def format_summary(summary: dict) -> str:
    lines = []
    capacity = [k for k in ("capacity_rps", "capacity_status", "capacity_num_evaluations") if k in summary]
    for key in (*SUMMARY_KEYS_SHOWN[:2], *capacity, *SUMMARY_KEYS_SHOWN[2:]):
        value = summary.get(key)
        if isinstance(value, float):
            value = f"{value:.4g}"
        elif isinstance(value, dict):
            value = ", ".join(f"{k}={v:.3f}" for k, v in value.items())
        lines.append(f"  {key:<24} {value}")
    if "cluster_num_replicas" in summary:
        lines.append(f"  {'cluster':<24} {summary['cluster_num_replicas']} replicas, {summary['cluster_router']}")
        for index, row in summary["per_replica"].items():
            metrics = ", ".join(f"{k}={row[k]:.4g}" if isinstance(row[k], float) else f"{k}={row[k]}"
                                for k in ("num_requests", "slo_attainment", "goodput_rps", "ttft_p99_s", "tbt_p99_s"))
            lines.append(f"  {'replica ' + index:<24} {metrics}")
    return "\n".join(lines)


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def main(cfg: DictConfig) -> float:
    hydra_cfg = HydraConfig.get()
    output_dir = Path(hydra_cfg.runtime.output_dir)
    sweep_dir = Path(hydra_cfg.sweep.dir) if hydra_cfg.mode == RunMode.MULTIRUN else None
    try:
        digest = _resolved_hash(cfg)
        if sweep_dir is not None and cfg.get("resume", True):
            done = resume.find_result(sweep_dir, digest, own_dir=output_dir)
            if done is not None:
                summary = json.loads(done.read_text())
                print(f"{summary.get('scheduler')} on {summary.get('workload')}: already done -> {done.parent} "
                      f"(resume)")
                return float(summary.get("goodput_rps") or float("nan"))
        resume.remove_stale_temporaries(output_dir)  # what a killed earlier attempt of this job left half-written
        summary = run_task(cfg, output_dir, config_hash=digest)
    except AccelgenError as error:
        print(f"accelgen: error: {error}", file=sys.stderr)
        if sweep_dir is not None:
            # One impossible job must not cost the rest of the sweep: record it; the sweep's end reports it and
            # exits non-zero (runtime.report.ComparisonCallback).
            write_json(output_dir / FAILED_FILE, {"error": str(error), "type": type(error).__name__})
            return float("nan")
        sys.exit(2)
    (output_dir / FAILED_FILE).unlink(missing_ok=True)  # a retried job that now succeeds
    print(f"{summary['scheduler']} on {summary['workload']} -> {output_dir}")
    print(format_summary(summary))
    log_run(cfg, output_dir, summary, sweep_dir=sweep_dir)
    # The metric a sweeper optimises.
    return float(summary.get("goodput_rps") or float("nan"))


def _resolved_hash(cfg: DictConfig) -> str:
    """``resume.config_hash``, with a config that cannot resolve reported as the ``ConfigError`` it is."""
    try:
        return resume.config_hash(cfg)
    except InterpolationResolutionError as error:
        # OmegaConf re-wraps a resolver's exception once per nesting level; its message survives as text.
        message = str(error).splitlines()[0].rsplit(" raised while resolving interpolation: ", 1)[-1]
        raise ConfigError(message) from None


def run_task(cfg: DictConfig, output_dir: Path, *, config_hash: str | None = None) -> dict:
    """``task=run`` (one experiment) or ``task=capacity`` (a capacity search, ``runtime.capacity_task``)."""
    task = cfg.get("task") or {}
    name = task.get("name", "run")
    if name == "run":
        return run(cfg, output_dir, config_hash=config_hash)
    if name == "capacity":
        from runtime.capacity_task import run_capacity

        return run_capacity(cfg, output_dir, config_hash=config_hash)
    raise ConfigError(f"task.name must be 'run' or 'capacity', got {name!r}")


def log_run(cfg: DictConfig, output_dir: Path, summary: dict, *, sweep_dir: Path | None) -> None:
    """Send a finished run to the configured logger (``logger=wandb``); a logger never fails the experiment."""
    if cfg.get("logger") is None:
        return
    try:
        instantiate_node(cfg.logger).log_run(cfg, output_dir, summary, sweep_dir=sweep_dir)
    except Exception as error:  # noqa: BLE001 - results are on disk already; the logger is a copy
        warnings.warn(f"logger failed, local results are in {output_dir}: {type(error).__name__}: {error}",
                      stacklevel=1)


if __name__ == "__main__":
    main()
