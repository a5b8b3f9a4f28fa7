"""A fixed slice of the simulator loop for instruction counting, which does not depend on machine load.

    valgrind --tool=callgrind .venv/bin/python bench/loop_instructions.py --run    # build + engine loop
    valgrind --tool=callgrind .venv/bin/python bench/loop_instructions.py          # build only
    # the engine loop's instructions = the first "Collected" count minus the second

The slice is the first 3,000 requests of the Azure 2023 conversation trace with ``sarathi`` on Llama-2-7B / A100
(needs ../shared/data). Use it to compare two versions of the hot loop; use bench/sim_speed.py for speed.
"""
from __future__ import annotations

import argparse

from hydra import compose, initialize_config_dir

from runtime.cli import CONF_DIR, build
from runtime.core.clock import VirtualClock
from runtime.core.engine import Engine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", action="store_true", help="also run the engine loop (otherwise only build)")
    parser.add_argument("--max-requests", type=int, default=3000)
    args = parser.parse_args()
    with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
        cfg = compose(config_name="config", overrides=[
            "progress=false", "scheduler=sarathi", "workload=azure_conv", f"workload.max_requests={args.max_requests}"])
    parts = build(cfg)
    if args.run:
        engine = Engine(scheduler=parts["scheduler"], executor=parts["executor"], workload=parts["workload"],
                        clock=VirtualClock())
        print(f"{len(engine.run().iterations)} iterations")


if __name__ == "__main__":
    main()
