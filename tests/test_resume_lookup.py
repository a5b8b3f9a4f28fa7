"""runtime.resume.find_result: which job folder's summary.json counts as a sweep job's earlier result."""
from __future__ import annotations

import json
from pathlib import Path

from runtime.resume import find_result

DIGEST = "ab" * 32
OTHER = "cd" * 32


def write(folder: Path, **summary) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "summary.json"
    path.write_text(json.dumps(summary))
    return path


def test_the_jobs_own_folder_wins_over_an_earlier_copy(tmp_path):
    write(tmp_path / "0_scheduler=vllm", config_hash=DIGEST, where="first in sort order")
    own = write(tmp_path / "3_scheduler=vllm", config_hash=DIGEST, where="own")
    assert find_result(tmp_path, DIGEST, own_dir=tmp_path / "3_scheduler=vllm") == own.resolve()
    assert find_result(tmp_path, DIGEST) == tmp_path / "0_scheduler=vllm" / "summary.json"


def test_a_renumbered_job_finds_its_result_in_another_folder(tmp_path):
    write(tmp_path / "1_rate=2", config_hash=OTHER)
    moved = write(tmp_path / "2_rate=3", config_hash=DIGEST)
    (tmp_path / "3_rate=3").mkdir()  # the job's new folder: nothing there yet
    assert find_result(tmp_path, DIGEST, own_dir=tmp_path / "3_rate=3") == moved


def test_the_digest_must_be_the_config_hash_not_just_somewhere_in_the_file(tmp_path):
    write(tmp_path / "0", config_hash=OTHER, note=f"copied from {DIGEST}")
    (tmp_path / "1").mkdir()
    (tmp_path / "1" / "summary.json").write_text('{"config_hash": "' + DIGEST + '", "truncat')  # not JSON
    write(tmp_path / "2", config_hash=DIGEST.upper())
    assert find_result(tmp_path, DIGEST, own_dir=tmp_path / "0") is None
    assert find_result(tmp_path, OTHER, own_dir=tmp_path / "1") == tmp_path / "0" / "summary.json"
