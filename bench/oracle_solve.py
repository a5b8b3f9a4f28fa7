"""Oracle solve time: wall time of ``solvers.solve.solve`` per backend, on states drawn from a real simulated run.

States come from the default mixed workload on Llama-2-7B / A100 (``--num-requests 3000``, AccelGen driving the
run) at an overload rate per target size (``--targets SIZE=RATE``, default 32, 128 and 256 queued at 6 req/s, 1024
at 9 req/s; AccelGen's capacity there is 3.2 req/s), so the waiting queue grows through the size while requests
still arrive. Pass 1 records the queue length before every ``schedule(now)`` call; the steps whose queue is within
``--window`` (relative, ±10%) of the size *and* that come before the last arrival are eligible, and ``--states`` of
them, evenly spaced, are picked. (After the last arrival an overloaded run drains a queue of requests that have
almost all missed their SLO, which a serving system with ongoing arrivals rarely sees; ``--include-drain`` keeps
those steps.) Pass 2 replays the same deterministic run and, just before each picked ``schedule`` call, freezes the
state with ``solvers.instance.instance_from_scheduler``: ``OracleParams`` from the root ``oracle`` node as gap
accounting builds them (``chunk_cap`` 1024, ``kv_mode`` physical: ``--kv-mode``), ``eta`` = 1 / the workload's mean
output length, ``dead`` from an ``SLOTracker`` fed every step.

Every state is solved by

* the default backend (``decomposed``) with the Oracle's candidate pruning (``--max-candidates 256``: the 256
  least-slack waiting requests plus every running one) and the default relative gap, once at the Oracle's time
  limit (``--time-limit 0.05``) and once without a limit; likewise at 1024 queued without pruning
  (``--unpruned-sizes``, max_candidates=100000) and at 256 queued at ``--fine-gap 1e-4`` (``--fine-gap-sizes``);
* each reference backend (the rest of ``--backends``) on ``--ref-states`` of the states per size, evenly spaced,
  with a generous limit (``--ref-time-limit 10``), so that they usually prove optimality.

Timing is ``perf_counter`` around ``solve()`` (model building included), with CPU time beside it (this process and
its children); each backend solves one state untimed first (imports, solver start-up). Reported per size and
variant: median, p99 and max wall and CPU time, status counts, the number of candidates and of alive waiting
requests among them. Agreement: for every state where a reference reached ``optimal``, the relative difference
``(J_ref − J_default) / max(|J_ref|, 1e-9)`` against the default backend, at the Oracle's limit and without one.

    .venv/bin/python bench/oracle_solve.py                     # full run, about 100 s on 2 cores
    .venv/bin/python bench/oracle_solve.py --quick             # smoke run: 4 states per size, 1 per reference
    .venv/bin/python bench/oracle_solve.py --include-drain --out bench/results/oracle_solve_drain
    .venv/bin/python bench/oracle_solve.py --backends decomposed cpsat --states 10

Outputs in ``--out`` (``bench/results/oracle_solve``): ``results.csv`` (one row per solve), ``summary.json`` and
``summary.md``. Needs no data outside the repository.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import resource
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from hydra import compose, initialize_config_dir
from tqdm.auto import tqdm

from runtime.cli import CONF_DIR, build
from runtime.core.clock import VirtualClock
from runtime.core.engine import Engine
from runtime.core.run_log import atomic_write, write_json
from solvers.instance import NEW, Latency, OracleInstance, OracleParams, SLOTracker, instance_from_scheduler
from solvers.solve import BACKENDS, DEFAULT_BACKEND, DEFAULT_MIP_GAP, solve

TARGETS = {32: 6.0, 128: 6.0, 256: 6.0, 1024: 9.0}   # queued requests -> arrival rate (req/s) of the run
UNPRUNED = 100_000
DEFAULT_LABEL = DEFAULT_BACKEND  # the Oracle's own setting: pruned, default gap, --time-limit


@dataclass(frozen=True, slots=True)
class State:
    """One frozen iteration: the instances built from it, keyed by ``max_candidates``."""

    size: int
    rate: float
    index: int           # position among this size's states
    step: int            # schedule() call of the run (0-based)
    now: float
    queued: int
    running: int
    instances: dict[int, OracleInstance] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Variant:
    label: str
    backend: str
    max_candidates: int
    mip_gap: float
    time_limit_s: float | None
    sizes: tuple[int, ...]
    reference: bool = False   # solved on --ref-states states only


class Snapshotter:
    """A scheduler wrapper: records the queue length before every ``schedule`` call and freezes the picked ones."""

    def __init__(self, scheduler, workload, *, rate: float, latency: Latency, eta: float, params: OracleParams,
                 picks: dict[int, list[tuple[int, int]]], candidates: dict[int, tuple[int, ...]]) -> None:
        self.inner, self.workload, self.rate = scheduler, workload, rate
        self.latency, self.eta, self.params = latency, eta, params
        self.picks, self.candidates = picks, candidates
        self.tracker = SLOTracker(bound_prefill_iterations=params.bound_prefill_iterations)
        self.queued: list[int] = []
        self.pending: list[bool] = []   # arrivals still to come
        self.states: list[State] = []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def schedule(self, now: float):
        step, inner = len(self.queued), self.inner
        self.queued.append(len(inner.waiting))
        self.pending.append(self.workload.has_pending())
        for size, index in self.picks.get(step, ()):
            instances = {k: instance_from_scheduler(inner, now, latency=self.latency,
                                                    params=dataclasses.replace(self.params, max_candidates=k),
                                                    dead=self.tracker.dead, eta=self.eta)
                         for k in self.candidates[size]}
            self.states.append(State(size, self.rate, index, step, now, len(inner.waiting), inner.num_running,
                                     instances))
        return inner.schedule(now)

    def update_from_output(self, output, result, now: float):
        finished = self.inner.update_from_output(output, result, now)
        self.tracker.observe(output, result.step_time, self.inner.requests, finished)
        return finished


def compose_cfg(args, rate: float):
    with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
        return compose(config_name="config", overrides=[
            "progress=false", f"seed={args.seed}", f"scheduler={args.scheduler}",
            f"workload.num_requests={args.num_requests}", f"workload.arrival.rate={rate}", *args.overrides])


def oracle_params(cfg, kv_mode: str) -> OracleParams:
    """The root ``oracle`` node's objective and limits, as gap accounting reads them."""
    node = cfg.oracle
    kw = {f.name: node[f.name] for f in dataclasses.fields(OracleParams) if f.name in node}
    return OracleParams(**{**kw, "kv_mode": kv_mode,
                           "bound_prefill_iterations": bool(cfg.slo.bound_prefill_iterations)})


def simulate(cfg, desc: str, kv_mode: str, picks=None, candidates=None) -> Snapshotter:
    """One run of the composed experiment through a ``Snapshotter``."""
    parts = build(cfg)
    workload = parts["workload"]
    snap = Snapshotter(parts["scheduler"], workload, rate=float(cfg.workload.arrival.rate),
                       latency=Latency.of(parts["cost_model"]), eta=1.0 / float(np.mean(workload.num_output_tokens)),
                       params=oracle_params(cfg, kv_mode), picks=picks or {}, candidates=candidates or {})
    with tqdm(total=len(workload), desc=desc, unit="req", dynamic_ncols=True, leave=False) as bar:
        Engine(scheduler=snap, executor=parts["executor"], workload=workload, clock=VirtualClock(),
               progress=bar).run()
    return snap


def eligible_steps(queued: np.ndarray, allowed: np.ndarray, size: int, window: float) -> np.ndarray:
    return np.flatnonzero((np.abs(queued - size) <= window * size) & allowed)


def pick_steps(eligible: dict[int, np.ndarray], num: int) -> dict[int, list[tuple[int, int]]]:
    """Per size, ``num`` of its eligible steps, evenly spaced: ``{step: [(size, index)]}``."""
    picks: dict[int, list[tuple[int, int]]] = {}
    for size, steps in eligible.items():
        if len(steps) < num:
            print(f"warning: only {len(steps)} eligible steps for {size} queued (wanted {num}); change its rate "
                  f"in --targets or raise --num-requests", file=sys.stderr)
        chosen = steps[np.unique(np.linspace(0, len(steps) - 1, num).round().astype(int))] if len(steps) else []
        for index, step in enumerate(chosen):
            picks.setdefault(int(step), []).append((size, index))
    return picks


def capture(args, variants: list[Variant]) -> tuple[list[State], list[dict]]:
    """Both passes for every rate of ``--targets``; returns the states and one record per run."""
    states, runs = [], []
    for rate in sorted(set(args.targets.values())):
        sizes = [size for size, r in args.targets.items() if r == rate]
        cfg = compose_cfg(args, rate)
        trace = simulate(cfg, f"rate {rate:g}: queue trace", args.kv_mode)
        queued, pending = np.asarray(trace.queued), np.asarray(trace.pending)
        allowed = np.ones_like(pending) if args.include_drain else pending
        eligible = {size: eligible_steps(queued, allowed, size, args.window) for size in sizes}
        candidates = {size: tuple(sorted({v.max_candidates for v in variants if size in v.sizes})) for size in sizes}
        snap = simulate(cfg, f"rate {rate:g}: snapshots", args.kv_mode, pick_steps(eligible, args.states), candidates)
        mismatched = [s.step for s in snap.states if s.queued != queued[s.step]]
        if mismatched:
            raise RuntimeError(f"the replay at rate {rate} diverged from its first pass at steps {mismatched[:5]}")
        states += snap.states
        runs.append(dict(rate=rate, sizes=sizes, steps=len(queued), steps_with_arrivals=int(pending.sum()),
                         max_queued=int(queued.max()), eligible={s: len(e) for s, e in eligible.items()},
                         eligible_span={s: int(e[-1] - e[0]) if len(e) else 0 for s, e in eligible.items()}))
    return states, runs


def make_variants(args) -> list[Variant]:
    """The default backend's rows (each at the Oracle's limit and without one), then one row per reference."""
    sizes = tuple(args.targets)
    base = dict(backend=DEFAULT_BACKEND, max_candidates=args.max_candidates, mip_gap=args.mip_gap)
    extra = [("", base, sizes),
             (", no pruning", dict(base, max_candidates=UNPRUNED), tuple(s for s in args.unpruned_sizes if s in sizes)),
             (f", gap {args.fine_gap:g}", dict(base, mip_gap=args.fine_gap),
              tuple(s for s in args.fine_gap_sizes if s in sizes))]
    variants = []
    if DEFAULT_BACKEND in args.backends:
        for suffix, kw, on in extra:
            if on:
                variants.append(Variant(f"{DEFAULT_BACKEND}{suffix}", time_limit_s=args.time_limit, sizes=on, **kw))
                variants.append(Variant(f"{DEFAULT_BACKEND}{suffix}, no limit", time_limit_s=None, sizes=on, **kw))
    variants += [Variant(b, b, args.max_candidates, args.mip_gap, args.ref_time_limit, sizes, reference=True)
                 for b in args.backends if b != DEFAULT_BACKEND]
    return variants


def ref_indices(num: int, ref_states: int) -> set[int]:
    return set(np.unique(np.linspace(0, num - 1, min(ref_states, num)).round().astype(int)).tolist()) if num else set()


def cpu_seconds() -> float:
    """CPU time of this process and its reaped children (``pulp_cbc`` runs CBC as a subprocess)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def solve_row(state: State, variant: Variant) -> dict:
    inst = state.instances[variant.max_candidates]
    c0, t0 = cpu_seconds(), time.perf_counter()
    plan = solve(inst, variant.backend, variant.time_limit_s, mip_gap=variant.mip_gap)
    wall, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    waiting = inst.kind == NEW
    return dict(size=state.size, rate=state.rate, state=state.index, step=state.step, sim_time_s=state.now,
                queued=state.queued, running=state.running, candidates=len(inst), alive=int(inst.alive.sum()),
                alive_waiting=int((inst.alive & waiting).sum()), variant=variant.label, backend=variant.backend,
                max_candidates=variant.max_candidates, mip_gap=variant.mip_gap, time_limit_s=variant.time_limit_s,
                status=plan.status, objective=plan.objective, bound=plan.bound, batch_size=len(plan.batch),
                wall_ms=wall * 1e3, cpu_ms=cpu * 1e3, solve_ms=plan.solve_time_s * 1e3,
                exact_solves=plan.stats.get("exact_solves"), max_core=plan.stats.get("max_core"), message=plan.message)


def measure(states: list[State], variants: list[Variant], ref_states: int) -> pd.DataFrame:
    """Every (state, variant) solve, state-major so machine noise spreads over the backends alike."""
    per_size = Counter(s.size for s in states)
    refs = {size: ref_indices(n, ref_states) for size, n in per_size.items()}
    tasks = [(s, v) for s in states for v in variants
             if s.size in v.sizes and (not v.reference or s.index in refs[s.size])]
    warm = {v.backend: (s, v) for s, v in reversed(tasks)}   # each backend's first task, solved once untimed
    for s, v in tqdm(list(warm.values()), desc="warm-up", unit="solve", dynamic_ncols=True, leave=False):
        solve_row(s, v)
    return pd.DataFrame([solve_row(s, v) for s, v in tqdm(tasks, desc="solves", unit="solve", dynamic_ncols=True)])


def summarise(frame: pd.DataFrame, variants: list[Variant]) -> pd.DataFrame:
    order = {v.label: i for i, v in enumerate(variants)}
    rows = []
    for (size, label), g in frame.groupby(["size", "variant"]):
        ms, cpu = g.wall_ms.to_numpy(), g.cpu_ms.to_numpy()
        rows.append(dict(size=size, variant=label, states=len(g), candidates_median=float(g.candidates.median()),
                         candidates_max=int(g.candidates.max()), alive_waiting_median=float(g.alive_waiting.median()),
                         median_ms=float(np.median(ms)), p99_ms=float(np.percentile(ms, 99)), max_ms=float(ms.max()),
                         cpu_median_ms=float(np.median(cpu)), cpu_p99_ms=float(np.percentile(cpu, 99)),
                         status=", ".join(f"{k} {n}" for k, n in Counter(g.status).most_common()),
                         time_limit_s=g.time_limit_s.iloc[0], _order=order[label]))
    return pd.DataFrame(rows).sort_values(["size", "_order"]).drop(columns="_order").reset_index(drop=True)


def agreement(frame: pd.DataFrame, variants: list[Variant]) -> pd.DataFrame:
    """Per reference state that reached ``optimal``: relative objective difference to the default backend's."""
    keys = ["size", "state"]
    defaults = {label: frame[frame.variant == label].set_index(keys)[["objective", "status"]]
                for label in (DEFAULT_LABEL, f"{DEFAULT_LABEL}, no limit") if (frame.variant == label).any()}
    rows = []
    for v in (v for v in variants if v.reference):
        done = frame[(frame.variant == v.label) & (frame.status == "optimal")]
        for _, r in done.iterrows():
            row = dict(reference=v.label, size=r["size"], state=r["state"], step=r["step"], ref_objective=r.objective)
            for label, d in defaults.items():
                if (r["size"], r["state"]) not in d.index:
                    continue
                dec = d.loc[(r["size"], r["state"])]
                row[f"rel_diff[{label}]"] = (r.objective - dec.objective) / max(abs(r.objective), 1e-9)
                row[f"status[{label}]"] = dec.status
            rows.append(row)
    return pd.DataFrame(rows)


def machine() -> dict:
    import ortools

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    try:
        import pulp
        pulp_version = pulp.__version__
    except ImportError:
        pulp_version = None
    return dict(nproc=os.cpu_count(), cpu=cpu, python=platform.python_version(), ortools=ortools.__version__,
                pulp=pulp_version)


def _fmt(value) -> str:
    if isinstance(value, float):
        return "" if np.isnan(value) else f"{value:.4g}" if abs(value) < 1e-2 else f"{value:.1f}"
    return "" if value is None else str(value)


def md_table(frame: pd.DataFrame) -> str:
    lines = ["| " + " | ".join(frame.columns) + " |", "|" + "---|" * frame.shape[1]]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


def agreement_lines(agree: pd.DataFrame, mip_gap: float) -> list[str]:
    if agree.empty:
        return ["No reference reached `optimal` on any state (or none was run)."]
    lines = []
    for ref, g in agree.groupby("reference", sort=False):
        parts = []
        for col in (c for c in g.columns if c.startswith("rel_diff[")):
            vals = g[col].dropna()
            if len(vals):
                worst = g.loc[vals.abs().idxmax()]
                parts.append(f"vs `{col[9:-1]}`: max |rel diff| {vals.abs().max():.2e} (signed range "
                             f"{vals.min():+.2e} … {vals.max():+.2e}; worst at {worst['size']} queued, state "
                             f"{worst['state']}, step {worst['step']})")
        lines.append(f"- **{ref}**: {len(g)} optimal states; " + "; ".join(parts))
    lines += ["", f"Positive: the reference found a better batch than the default backend; up to 2·mip_gap = "
                  f"{2 * mip_gap:g} is expected from the two gap tolerances."]
    cols = [c for c in agree.columns if c.startswith("rel_diff[")]
    beyond = agree[(agree[cols].abs() > 2 * mip_gap).any(axis=1)]
    if not beyond.empty:
        lines += ["", "States beyond 2·mip_gap:", ""]
        for _, r in beyond.iterrows():
            diffs = ", ".join(f"{c[9:-1]} {r[c]:+.3g} ({r[f'status[{c[9:-1]}]']})" for c in cols if pd.notna(r[c]))
            lines.append(f"- {r['reference']} at {r['size']} queued, state {r['state']} (step {r['step']}): J_ref "
                         f"{r['ref_objective']:.6g}; rel diff vs {diffs}")
    return lines


def report(argv: list[str], args, runs: list[dict], summary: pd.DataFrame, agree: pd.DataFrame, info: dict,
           wall_s: float) -> str:
    table = summary.assign(limit=summary.time_limit_s.map(lambda t: "none" if pd.isna(t) else f"{t:g} s"))
    table = table[["size", "variant", "limit", "states", "candidates_median", "candidates_max", "alive_waiting_median",
                   "median_ms", "p99_ms", "max_ms", "cpu_median_ms", "cpu_p99_ms", "status"]].rename(columns={
                       "size": "queued", "candidates_median": "candidates (median)", "candidates_max": "(max)",
                       "alive_waiting_median": "alive waiting (median)", "median_ms": "median ms", "p99_ms": "p99 ms",
                       "max_ms": "max ms", "cpu_median_ms": "CPU median ms", "cpu_p99_ms": "CPU p99 ms"})
    sources = "; ".join(f"{r['rate']:g} req/s for " + ", ".join(
        f"{s} ({r['eligible'][s]} eligible steps over {r['eligible_span'][s]})" for s in r["sizes"]) for r in runs)
    return "\n".join([
        "# Oracle solve time", "",
        f"`.venv/bin/python bench/oracle_solve.py {' '.join(argv)}`", "",
        f"States: scheduler={args.scheduler}, workload.num_requests={args.num_requests}, seed={args.seed}, queue "
        f"within ±{args.window:.0%} of each size, {'all steps' if args.include_drain else 'before the last arrival'}; "
        f"{sources}. kv_mode {args.kv_mode}; mip_gap {args.mip_gap:g} unless stated; max_candidates "
        f"{args.max_candidates} unless 'no pruning'. "
        f"Machine: {info['nproc']} CPUs ({info['cpu']}), Python {info['python']}, OR-Tools {info['ortools']}, "
        f"PuLP {info['pulp']}. Bench wall time {wall_s:.0f} s.", "",
        md_table(table), "",
        "Wall time of `solve()` per state (CPU: this process's plus its children's, the figure to trust when other "
        "work shares the machine; every backend runs single-threaded). p99 is numpy's interpolated 99th percentile: "
        "with n states it lies between the two slowest solves (n = 30: 71% of the way from the second slowest to the "
        "slowest).", "",
        "## Agreement", "", *agreement_lines(agree, args.mip_gap), "",
    ])


def target(text: str) -> tuple[int, float]:
    size, _, rate = text.partition("=")
    try:
        return int(size), float(rate)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected SIZE=RATE (e.g. 256=6), got {text!r}") from None


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backends", nargs="+", default=["decomposed", "scip", "cbc", "cpsat", "pulp_cbc"],
                        choices=sorted(BACKENDS))
    parser.add_argument("--targets", nargs="+", type=target, default=list(TARGETS.items()), metavar="SIZE=RATE",
                        help="target queue lengths and the arrival rate (req/s) of the run they are drawn from")
    parser.add_argument("--include-drain", action="store_true", help="also draw states after the last arrival")
    parser.add_argument("--window", type=float, default=0.1, help="relative tolerance around each size")
    parser.add_argument("--states", type=int, default=30, help="states per size")
    parser.add_argument("--ref-states", type=int, default=5, help="states per size for the reference backends")
    parser.add_argument("--time-limit", type=float, default=0.05, help="the Oracle's time limit (s)")
    parser.add_argument("--ref-time-limit", type=float, default=10.0, help="time limit of the references (s)")
    parser.add_argument("--mip-gap", type=float, default=DEFAULT_MIP_GAP)
    parser.add_argument("--max-candidates", type=int, default=OracleParams().max_candidates)
    parser.add_argument("--kv-mode", choices=["physical", "footprint"], default="physical",
                        help="physical (gap accounting's) fits a heuristic's state; footprint is scheduler=oracle's")
    parser.add_argument("--unpruned-sizes", nargs="*", type=int, default=[1024])
    parser.add_argument("--fine-gap", type=float, default=1e-4)
    parser.add_argument("--fine-gap-sizes", nargs="*", type=int, default=[256])
    parser.add_argument("--scheduler", default="accelgen", help="the scheduler driving the run")
    parser.add_argument("--num-requests", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="4 states per size, 1 per reference, 2 s limit")
    parser.add_argument("--out", type=Path, default=Path("bench/results/oracle_solve"))
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides")
    args = parser.parse_args(argv)
    args.targets = dict(args.targets)
    if args.quick:
        args.states, args.ref_states, args.ref_time_limit = 4, 1, 2.0
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    t0 = time.perf_counter()
    variants = make_variants(args)
    states, runs = capture(args, variants)
    frame = measure(states, variants, args.ref_states)
    summary, agree, info = summarise(frame, variants), agreement(frame, variants), machine()
    wall_s = time.perf_counter() - t0
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write(args.out / "results.csv", lambda p: frame.to_csv(p, index=False))
    text = report(argv, args, runs, summary, agree, info, wall_s)
    atomic_write(args.out / "summary.md", lambda p: p.write_text(text))
    write_json(args.out / "summary.json", dict(
        argv=argv, machine=info, wall_s=wall_s, runs=runs,
        settings={k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        summary=summary.to_dict(orient="records"), agreement=agree.to_dict(orient="records")))
    print("\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
