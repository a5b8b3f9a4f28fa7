"""How long a live decode step takes right after a prefill, step by step, until it settles (CPU).

    python bench/live_step_settle.py                   # llama_15m, 2 threads
    python bench/live_step_settle.py --threads 1
    OMP_WAIT_POLICY=PASSIVE python bench/live_step_settle.py

Runs ``--rounds`` rounds of (one ``--prefill``-token prefill, then ``--decodes`` single decodes at context
``--context``) through ``LiveExecutor`` and prints the median time of the k-th decode after the prefill. This is
the effect that keeps the history-free cost model from following live TBT where prefills and decodes alternate
(BENCHMARKS.md, "Simulator fidelity against the live runtime").
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import yaml

from runtime.cli import CONF_DIR
from runtime.core.kv_cache import BlockManager
from runtime.core.outputs import SchedulerOutput
from runtime.live.executor import LiveExecutor
from runtime.sim.specs import ModelSpec


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="llama_15m")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--prefill", type=int, default=512)
    parser.add_argument("--context", type=int, default=200)
    parser.add_argument("--decodes", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args(argv)
    fields = yaml.safe_load(open(f"{CONF_DIR}/model/{args.model}.yaml"))
    fields.pop("_target_")
    spec = ModelSpec(**fields)
    bm = BlockManager(num_blocks=bm_blocks(args), block_size=16)
    executor = LiveExecutor(model=spec, block_manager=bm, device="cpu", threads=args.threads)
    bm.allocate_slots("prefill", args.prefill)
    bm.allocate_slots("decode", args.context)
    executor.tokens.append("decode", 1, args.context - 1)  # its last position holds a sampled token
    prefill = SchedulerOutput(num_scheduled_tokens={"prefill": args.prefill}, prefill_chunks=[(args.prefill, 0)],
                              prefill_req_ids=["prefill"])
    decode = SchedulerOutput(num_scheduled_tokens={"decode": 1}, decode_context_lens=[args.context],
                             decode_req_ids=["decode"])
    times = np.empty((args.rounds, args.decodes))
    for r in range(args.rounds):
        executor._forward(prefill, bm.tables, executor.tokens)
        for k in range(args.decodes):
            start = time.perf_counter()
            executor._forward(decode, bm.tables, executor.tokens)
            times[r, k] = time.perf_counter() - start
    medians = np.median(times, axis=0) * 1e3
    print(f"{args.model}, {executor.description}, threads={args.threads or 'default'}")
    print("decode k after the prefill:  " + "  ".join(f"{k + 1:>5}" for k in range(args.decodes)))
    print("median ms:                   " + "  ".join(f"{m:5.2f}" for m in medians))


def bm_blocks(args) -> int:
    return -(-args.prefill // 16) + -(-args.context // 16) + 1


if __name__ == "__main__":
    main()
