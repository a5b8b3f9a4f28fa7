"""Request-length percentile tables: derived once from the real traces, shipped with the package, sampled at run time.

The traces in ``../shared/data`` are not redistributed. ``derive_table`` condenses one of them into 1001
quantiles (levels 0, 0.001, ..., 1) of the prompt and output lengths plus the Spearman rank correlation between
the two, and ``scripts/derive_length_tables.py`` writes ``runtime/sim/length_tables/<name>.csv``:

    # source: traces/azure2023/AzureLLMInferenceTrace_conv.csv
    # num_rows: 19366
    # prompt_mean: 1154.7...
    # output_mean: 211.1...
    # spearman: 0.1...
    quantile,prompt_tokens,output_tokens
    0.000,2,7
    ...

Quantiles use numpy's ``linear`` method, values are rounded to 3 decimals and every number is written with a
fixed format, so the same data always gives byte-identical files.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.special import ndtr

from runtime.core.errors import ConfigError, WorkloadError
from runtime.sim.traces import read_azure_trace, read_length_trace

TABLE_DIR = Path(__file__).resolve().parent / "length_tables"
NUM_QUANTILES = 1001
# name -> (path under the shared data dir, reader). The order is the order the script writes them in.
SOURCES: dict[str, tuple[str, str]] = {
    "sharegpt": ("traces/sarathi-serve/sharegpt_8k_filtered_stats_llama2_tokenizer.csv", "length"),
    "arxiv": ("traces/vidur/arxiv_summarization_stats_llama2_tokenizer_filtered_v2.csv", "length"),
    "azure_conv": ("traces/azure2023/AzureLLMInferenceTrace_conv.csv", "azure"),
    "azure_code": ("traces/azure2023/AzureLLMInferenceTrace_code.csv", "azure"),
}
_HEADER = "quantile,prompt_tokens,output_tokens"


@dataclass(frozen=True)
class LengthTable:
    """Joint length distribution of one application: marginal quantile functions plus a Gaussian copula.

    ``sample`` draws ``(z1, z2)`` standard normal with Pearson correlation ``rho = 2 sin(pi * spearman / 6)``
    (the exact map from a Gaussian copula's Spearman correlation to its normal correlation), turns them into
    uniforms ``u_i = Phi(z_i)`` and reads each marginal's inverse CDF by linear interpolation between the
    tabulated quantiles, ``x_i = interp(u_i, quantile, values_i)``. The marginals are therefore reproduced up to
    interpolation error and the rank correlation matches the trace's. Lengths are rounded to integers >= 1.
    """

    name: str
    quantile: np.ndarray  # [Q] increasing levels in [0, 1]
    prompt_tokens: np.ndarray  # [Q] non-decreasing
    output_tokens: np.ndarray  # [Q] non-decreasing
    spearman: float
    source: str = ""
    num_rows: int = 0
    prompt_mean: float = float("nan")
    output_mean: float = float("nan")

    def __post_init__(self) -> None:
        q = self.quantile
        if not (len(q) >= 2 and len(q) == len(self.prompt_tokens) == len(self.output_tokens)):
            raise WorkloadError(f"length table {self.name!r}: quantile and value columns differ in length")
        if q[0] != 0.0 or q[-1] != 1.0 or np.any(np.diff(q) <= 0):
            raise WorkloadError(f"length table {self.name!r}: quantile levels must increase from 0 to 1")
        for column in ("prompt_tokens", "output_tokens"):
            if np.any(np.diff(getattr(self, column)) < 0):
                raise WorkloadError(f"length table {self.name!r}: {column} must be non-decreasing")
        if not -1.0 <= self.spearman <= 1.0:
            raise WorkloadError(f"length table {self.name!r}: spearman {self.spearman} is outside [-1, 1]")

    @property
    def pearson(self) -> float:
        """Normal-copula correlation that yields ``spearman`` as rank correlation."""
        return 2.0 * math.sin(math.pi * self.spearman / 6.0)

    @classmethod
    def load(cls, name: str) -> LengthTable:
        """The shipped table ``name``; ``available()`` lists the names."""
        path = TABLE_DIR / f"{name}.csv"
        if not path.is_file():
            raise ConfigError(f"unknown length table {name!r}; available: {available()}")
        return cls.read(path, name=name)

    @classmethod
    def read(cls, path: str | Path, *, name: str | None = None) -> LengthTable:
        path = Path(path)
        meta: dict[str, str] = {}
        num_comment_lines = 0
        with path.open() as f:
            for line in f:
                if not line.startswith("#"):
                    break
                num_comment_lines += 1
                key, _, value = line[1:].partition(":")
                meta[key.strip()] = value.strip()
        # skiprows counts the comment lines too, plus the column header.
        data = np.loadtxt(path, delimiter=",", skiprows=num_comment_lines + 1, ndmin=2)
        if "spearman" not in meta or data.shape[1] != 3:
            raise WorkloadError(f"{path}: not a length table (needs a '# spearman:' line and columns {_HEADER})")
        return cls(
            name=name or path.stem,
            quantile=data[:, 0],
            prompt_tokens=data[:, 1],
            output_tokens=data[:, 2],
            spearman=float(meta["spearman"]),
            source=meta.get("source", ""),
            num_rows=int(meta.get("num_rows", 0)),
            prompt_mean=float(meta.get("prompt_mean", "nan")),
            output_mean=float(meta.get("output_mean", "nan")),
        )

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """``n`` correlated (prompt, output) length pairs as int64 arrays, each >= 1.

        Draws exactly one ``rng.standard_normal((n, 2))``, so callers can rely on a fixed number of draws.
        """
        if n < 0:
            raise ConfigError(f"length table {self.name!r}: cannot sample n={n} requests")
        z = rng.standard_normal((n, 2))
        rho = self.pearson
        z_out = rho * z[:, 0] + math.sqrt(max(0.0, 1.0 - rho * rho)) * z[:, 1]
        u_prompt, u_output = ndtr(z[:, 0]), ndtr(z_out)
        prompt = np.interp(u_prompt, self.quantile, self.prompt_tokens)
        output = np.interp(u_output, self.quantile, self.output_tokens)
        return _to_lengths(prompt), _to_lengths(output)


def available() -> list[str]:
    return sorted(p.stem for p in TABLE_DIR.glob("*.csv"))


def _to_lengths(values: np.ndarray) -> np.ndarray:
    return np.maximum(np.rint(values), 1).astype(np.int64)


# Derivation (used by scripts/derive_length_tables.py and its reproducibility test) ------------------------------
def read_source(name: str, data_dir: str | Path) -> pd.DataFrame:
    """The trace behind table ``name`` as ``num_prompt_tokens``/``num_output_tokens`` columns."""
    if name not in SOURCES:
        raise ConfigError(f"unknown length table {name!r}; available: {sorted(SOURCES)}")
    relative, kind = SOURCES[name]
    path = Path(data_dir) / relative
    return read_azure_trace(path) if kind == "azure" else read_length_trace(path)


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman rank correlation with average ranks for ties (the textbook definition, as scipy computes it)."""
    rx = pd.Series(x).rank(method="average").to_numpy()
    ry = pd.Series(y).rank(method="average").to_numpy()
    return float(np.corrcoef(rx, ry)[0, 1])


def derive_table(name: str, data_dir: str | Path) -> str:
    """The CSV text of table ``name``; a pure function of the trace's contents."""
    frame = read_source(name, data_dir)
    prompt = frame["num_prompt_tokens"].to_numpy(dtype=np.float64)
    output = frame["num_output_tokens"].to_numpy(dtype=np.float64)
    levels = np.arange(NUM_QUANTILES) / (NUM_QUANTILES - 1)
    # Rounding to 3 decimals before formatting hides last-bit differences between numpy builds.
    q_prompt = np.round(np.quantile(prompt, levels, method="linear"), 3)
    q_output = np.round(np.quantile(output, levels, method="linear"), 3)
    lines = [
        f"# source: {SOURCES[name][0]}",
        f"# num_rows: {len(frame)}",
        f"# prompt_mean: {prompt.mean():.4f}",
        f"# output_mean: {output.mean():.4f}",
        f"# spearman: {spearman(prompt, output):.6f}",
        _HEADER,
    ]
    lines += [f"{lv:.3f},{_fmt(p)},{_fmt(o)}" for lv, p, o in zip(levels, q_prompt, q_output)]
    return "\n".join(lines) + "\n"


def _fmt(x: float) -> str:
    """Shortest fixed-point text of a 3-decimal value: 1020.0 -> '1020', 2734.5 -> '2734.5'."""
    return f"{x:.3f}".rstrip("0").rstrip(".")


def write_tables(data_dir: str | Path, out_dir: str | Path = TABLE_DIR, names: list[str] | None = None) -> list[Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name in names or list(SOURCES):
        path = out_dir / f"{name}.csv"
        # newline="\n" so Windows checkouts derive the same bytes.
        path.write_text(derive_table(name, data_dir), newline="\n")
        written.append(path)
    return written
