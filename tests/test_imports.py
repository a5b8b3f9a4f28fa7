"""Schedulers, solvers and the simulator must not import torch: it is checked in a fresh interpreter."""
from __future__ import annotations

import subprocess
import sys


def test_core_sim_heuristics_solvers_do_not_import_torch():
    code = (
        "import sys, pkgutil, importlib\n"
        "import runtime.core, runtime.sim, heuristics, solvers\n"
        "for pkg in (runtime.core, runtime.sim, heuristics, solvers):\n"
        "    for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + '.'):\n"
        "        importlib.import_module(m.name)\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
