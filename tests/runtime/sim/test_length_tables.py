from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from runtime.core.errors import ConfigError, WorkloadError
from runtime.sim.length_tables import SOURCES, TABLE_DIR, LengthTable, available, spearman, write_tables

REPO_ROOT = next(p for p in Path(__file__).resolve().parents if (p / "pyproject.toml").is_file())
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
needs_data = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="needs ../shared/data")

NAMES = ["sharegpt", "arxiv", "azure_conv", "azure_code"]
# data README section 4: rows, prompt mean, output mean.
README_STATS = {
    "azure_conv": (19366, 1154.7, 211.1),
    "azure_code": (8819, 2047.8, 27.9),
    "sharegpt": (30731, 2340.0, 438.7),
    "arxiv": (28257, 2588.1, 291.4),
}


def test_shipped_tables_are_present_and_small():
    assert available() == sorted(NAMES)
    for name in NAMES:
        path = TABLE_DIR / f"{name}.csv"
        assert path.stat().st_size < 60_000
        table = LengthTable.load(name)
        assert len(table.quantile) == 1001
        assert table.quantile[0] == 0.0 and table.quantile[-1] == 1.0
        assert table.source == SOURCES[name][0]


@pytest.mark.parametrize("name", NAMES)
def test_header_matches_readme_stats(name):
    table = LengthTable.load(name)
    rows, prompt_mean, output_mean = README_STATS[name]
    assert table.num_rows == rows
    assert table.prompt_mean == pytest.approx(prompt_mean, abs=0.06)
    assert table.output_mean == pytest.approx(output_mean, abs=0.06)


def test_unknown_table_lists_the_available_ones():
    with pytest.raises(ConfigError, match="available.*azure_code.*sharegpt"):
        LengthTable.load("nope")


@pytest.mark.parametrize("name", NAMES)
def test_sample_reproduces_the_quantiles(name):
    table = LengthTable.load(name)
    prompt, output = table.sample(200_000, np.random.default_rng(0))
    assert prompt.dtype == np.int64 and output.dtype == np.int64
    assert prompt.min() >= 1 and output.min() >= 1
    for values, column in ((prompt, table.prompt_tokens), (output, table.output_tokens)):
        for level in (0.5, 0.9):
            expected = column[round(level * 1000)]
            # A few percent, plus one token for the integer rounding of short outputs (code: median 13).
            assert np.quantile(values, level) == pytest.approx(expected, rel=0.03, abs=1.0)
    assert spearman(prompt, output) == pytest.approx(table.spearman, abs=0.02)


def test_sample_is_seeded():
    table = LengthTable.load("sharegpt")
    a = table.sample(1000, np.random.default_rng(7))
    b = table.sample(1000, np.random.default_rng(7))
    c = table.sample(1000, np.random.default_rng(8))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def _uniform_table(spearman_rho: float) -> LengthTable:
    q = np.linspace(0.0, 1.0, 101)
    return LengthTable(name="u", quantile=q, prompt_tokens=1 + 1000 * q, output_tokens=1 + 500 * q, spearman=spearman_rho)


@pytest.mark.parametrize("rho_s", [-0.6, 0.0, 0.8])
def test_copula_keeps_the_rank_correlation(rho_s):
    table = _uniform_table(rho_s)
    assert table.pearson == pytest.approx(2 * math.sin(math.pi * rho_s / 6))
    prompt, output = table.sample(100_000, np.random.default_rng(1))
    assert spearman(prompt, output) == pytest.approx(rho_s, abs=0.02)


def test_invalid_tables_are_rejected():
    q = np.linspace(0.0, 1.0, 5)
    with pytest.raises(WorkloadError, match="non-decreasing"):
        LengthTable(name="x", quantile=q, prompt_tokens=q[::-1], output_tokens=q, spearman=0.0)
    with pytest.raises(WorkloadError, match="from 0 to 1"):
        LengthTable(name="x", quantile=q * 0.5, prompt_tokens=q, output_tokens=q, spearman=0.0)
    with pytest.raises(WorkloadError, match="spearman"):
        LengthTable(name="x", quantile=q, prompt_tokens=q, output_tokens=q, spearman=1.5)


def test_read_round_trip(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("# spearman: 0.25\n# num_rows: 3\nquantile,prompt_tokens,output_tokens\n0.000,1,2\n1.000,10,20.5\n")
    table = LengthTable.read(path)
    assert table.name == "t" and table.spearman == 0.25 and table.num_rows == 3
    np.testing.assert_array_equal(table.output_tokens, [2.0, 20.5])


@needs_data
@pytest.mark.data
def test_rederived_tables_are_byte_identical(tmp_path):
    written = write_tables(SHARED_DATA, tmp_path)
    assert [p.name for p in written] == [f"{n}.csv" for n in SOURCES]
    for path in written:
        assert path.read_bytes() == (TABLE_DIR / path.name).read_bytes(), path.name
