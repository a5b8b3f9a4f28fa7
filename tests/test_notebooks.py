"""The notebooks: stored without outputs and parameterised, and each runs under papermill on real small runs."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from tests.conftest import REPO_ROOT

NOTEBOOKS = REPO_ROOT / "notebooks"
#: The PNGs each notebook saves into figures_dir, given the data the fixtures make.
FIGURES = {
    "01_scheduler_comparison": {"rates", "latency_cdf", "attainment_by_class"},
    "02_oracle_gap": {"oracle_gap", "oracle_gap_over_time", "goodput_vs_oracle"},
    "03_sim_vs_live": {"iteration_latency", "latency_cdf"},
}


def _accelgen(*args: str, cwd: Path) -> None:
    exe = Path(sys.executable).with_name("accelgen")
    done = subprocess.run([str(exe), "-m", *args, "progress=false"], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "WANDB_MODE": "disabled"})
    assert done.returncode == 0, done.stderr


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict[str, Path]:
    """A sweep (vllm and the Oracle at 2 and 4 req/s, then sarathi with gap accounting into the same directory;
    60 requests each) and a sim/live pair of the tiny model (8 requests)."""
    root = tmp_path_factory.mktemp("notebooks")
    sweep = root / "sweep"
    common = ["workload.arrival.rate=2,4", "workload.num_requests=60", f"hydra.sweep.dir={sweep}"]
    _accelgen("scheduler=vllm,oracle", *common, cwd=root)
    _accelgen("scheduler=sarathi", "oracle.gap_accounting=true", *common, cwd=root)
    pair = root / "sim_live"
    _accelgen("runtime=sim,live", "model=tiny", "hardware=cpu", "workload=live_small", "workload.num_requests=8",
              "scheduler=sarathi", f"hydra.sweep.dir={pair}", cwd=root)
    return {"01_scheduler_comparison": sweep, "02_oracle_gap": sweep, "03_sim_vs_live": pair}


@pytest.mark.parametrize("name", sorted(FIGURES))
def test_stored_notebook_has_no_outputs_and_a_parameters_cell(name):
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.kernelspec.name == "python3"
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    for cell in code:
        assert cell.outputs == [] and cell.execution_count is None, cell.source[:60]
    assert "parameters" in code[0].metadata.get("tags", [])
    assert "results_dir = " in code[0].source and "figures_dir = None" in code[0].source
    # Figures come from runtime.plots: no plotting code of a notebook's own.
    source = "\n".join(cell.source for cell in code)
    assert "from runtime import plots" in source
    assert "import matplotlib" not in source and "plt." not in source and "ax." not in source


def test_python3_kernel_is_this_interpreter():
    """papermill's kernel_name="python3" starts the interpreter running the tests (the venv's), with no kernel
    installed per user: jupyter_client runs a spec whose argv[0] is ``python`` with ``sys.executable``."""
    from jupyter_client.manager import KernelManager

    assert KernelManager(kernel_name="python3").format_kernel_cmd()[0] == sys.executable


@pytest.mark.parametrize("name", sorted(FIGURES))
def test_notebook_runs_and_saves_its_figures(name, results, tmp_path):
    papermill = pytest.importorskip("papermill")
    figures_dir = tmp_path / "figures"
    executed = tmp_path / f"{name}.ipynb"
    papermill.execute_notebook(str(NOTEBOOKS / f"{name}.ipynb"), str(executed), kernel_name="python3",
                               parameters={"results_dir": str(results[name]), "figures_dir": str(figures_dir)},
                               progress_bar=False, cwd=str(tmp_path))
    saved = {path.stem: path.stat().st_size for path in figures_dir.glob("*.png")}
    assert set(saved) == FIGURES[name]
    assert min(saved.values()) > 10_000
    nb = nbformat.read(executed, as_version=4)
    images = [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs
              if "image/png" in out.get("data", {})]
    assert len(images) == len(FIGURES[name])
