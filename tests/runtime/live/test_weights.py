"""Checkpoint loading (runtime.live.weights through executor.build_model): a Hugging Face save_pretrained
directory loads by name and gives HF's logits; each malformed directory is a CheckpointError naming the problem."""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from runtime.core.errors import CheckpointError
from runtime.core.outputs import SchedulerOutput
from runtime.live.executor import build_model
from tests.runtime.live.helpers import (FP32_REL_TOL, GQA_TIED, TINY, PagedRunner, assert_logits_close, hf_config,
                                        hf_logits, randomize)

CPU = torch.device("cpu")


def save_hf(spec, directory: Path, seed: int = 0, **kwargs):
    """An HF LlamaForCausalLM of ``spec`` with sensitive random weights, saved as safetensors."""
    from transformers import LlamaForCausalLM as HFLlama

    hf = HFLlama(hf_config(spec)).eval()
    randomize(hf, seed)  # same parameter names: norms perturbed away from 1, tied pair drawn once
    hf.save_pretrained(directory, safe_serialization=True, **kwargs)
    return hf


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tiny_ckpt")
    hf = save_hf(TINY, directory)
    return directory, hf


def load(spec, path):
    return build_model(spec, device=CPU, dtype=torch.float32, checkpoint=path)


def our_logits(model, ids) -> torch.Tensor:
    """Every position's logits of one whole-prompt step through the paged path."""
    runner = PagedRunner(model, num_blocks=8, block_size=16)
    out = SchedulerOutput(num_scheduled_tokens={"r": len(ids)}, prefill_chunks=[(len(ids), 0)],
                          prefill_req_ids=["r"], prefill_done_req_ids=["r"])
    _, logits = runner.step(out, {"r": list(range(8))}, lambda r, a, b: ids[a:b])
    return logits


def copy_checkpoint(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def assert_same_weights(model, hf):
    ours = model.state_dict()
    for name, tensor in hf.state_dict().items():
        assert torch.equal(ours[name], tensor), name


@pytest.mark.parametrize("spec", [TINY, GQA_TIED], ids=lambda s: s.name)
def test_loads_hf_checkpoint_with_identical_logits(tmp_path, spec):
    hf = save_hf(spec, tmp_path)
    if spec.tie_word_embeddings:
        from safetensors import safe_open

        with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
            assert "lm_head.weight" not in f.keys()  # HF drops the tied copy; the loader must cope
    model = load(spec, tmp_path)
    assert_same_weights(model, hf)
    assert not torch.allclose(model.model.norm.weight, torch.ones(spec.hidden_size))
    if spec.tie_word_embeddings:
        assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    ids = torch.randint(0, spec.vocab_size, (50,), generator=torch.Generator().manual_seed(1)).numpy()
    assert_logits_close(our_logits(model, ids), hf_logits(hf, ids), FP32_REL_TOL, spec.name)


def test_loads_into_bfloat16_by_casting(tiny_dir):
    directory, hf = tiny_dir
    model = build_model(TINY, device=CPU, dtype=torch.bfloat16, checkpoint=directory)
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    torch.testing.assert_close(model.model.layers[1].mlp.up_proj.weight,
                               hf.model.layers[1].mlp.up_proj.weight.to(torch.bfloat16), rtol=0, atol=0)


def test_sharded_checkpoint(tmp_path):
    hf = save_hf(TINY, tmp_path, max_shard_size="100KB")
    shards = sorted(tmp_path.glob("*.safetensors"))
    assert len(shards) >= 3 and (tmp_path / "model.safetensors.index.json").is_file()
    model = load(TINY, tmp_path)
    assert_same_weights(model, hf)


def test_checkpoint_rope_theta_from_rope_parameters(tmp_path):
    """transformers 5 writes rope_theta inside rope_parameters; it must be read there, not defaulted."""
    spec = dataclasses.replace(TINY, rope_theta=500_000.0)
    hf = save_hf(spec, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config.get("rope_parameters", {}).get("rope_theta", config.get("rope_theta")) == 500_000.0
    model = load(spec, tmp_path)
    ids = torch.randint(0, spec.vocab_size, (40,), generator=torch.Generator().manual_seed(2)).numpy()
    assert_logits_close(our_logits(model, ids), hf_logits(hf, ids), FP32_REL_TOL, "rope_theta 5e5")
    with pytest.raises(CheckpointError, match="rope_theta: model=10000.0, checkpoint=500000.0"):
        load(TINY, tmp_path)


def test_legacy_top_level_rope_theta(tiny_dir, tmp_path):
    path = copy_checkpoint(tiny_dir[0], tmp_path / "ckpt")
    config = json.loads((path / "config.json").read_text())
    config.pop("rope_parameters", None)
    config["rope_theta"] = 20000.0
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="rope_theta: model=10000.0, checkpoint=20000.0"):
        load(TINY, path)
    load(dataclasses.replace(TINY, rope_theta=20000.0), path)


def edit_config(path: Path, **changes) -> None:
    config = json.loads((path / "config.json").read_text())
    config.update(changes)
    (path / "config.json").write_text(json.dumps(config))


def edit_tensors(file: Path, edit) -> None:
    tensors = load_file(str(file))
    edit(tensors)
    save_file(tensors, str(file), metadata={"format": "pt"})


def _drop(name):
    return lambda t: t.pop(name)


def _add(name, value):
    return lambda t: t.__setitem__(name, value)


def _reshape(name):
    return lambda t: t.__setitem__(name, t[name][:, :-1].contiguous())


def _corrupt(path: Path) -> None:
    data = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(b"\xff" * 8 + data[8:100])


def _only_bin(path: Path) -> None:
    tensors = load_file(str(path / "model.safetensors"))
    (path / "model.safetensors").unlink()
    torch.save(tensors, path / "pytorch_model.bin")


SAFETENSORS = "model.safetensors"
BROKEN = {
    "no config.json": (lambda p: (p / "config.json").unlink(), r"has no config\.json"),
    "invalid JSON": (lambda p: (p / "config.json").write_text('{"model_type": "llama",,}'),
                     r"config\.json: not valid JSON"),
    "JSON not an object": (lambda p: (p / "config.json").write_text("[1, 2]"), r"expected a JSON object, got list"),
    "non-llama model_type": (lambda p: edit_config(p, model_type="gpt2", architectures=["GPT2LMHeadModel"]),
                             r"model_type='gpt2'.*only Llama"),
    "hidden_size mismatch": (lambda p: edit_config(p, hidden_size=128),
                             r"does not match model=tiny: hidden_size: model=64, checkpoint=128"),
    "kv heads mismatch": (lambda p: edit_config(p, num_key_value_heads=4), r"num_kv_heads: model=2, checkpoint=4"),
    "tied mismatch": (lambda p: edit_config(p, tie_word_embeddings=True),
                      r"tie_word_embeddings: model=False, checkpoint=True"),
    "rope scaling": (lambda p: edit_config(p, rope_parameters={"rope_type": "llama3", "factor": 8.0}),
                     r"rope_parameters=.*llama3.*not supported"),
    "missing tensor": (lambda p: edit_tensors(p / SAFETENSORS, _drop("model.layers.1.mlp.up_proj.weight")),
                       r"missing tensors \['model\.layers\.1\.mlp\.up_proj\.weight'\]"),
    "missing lm_head (untied)": (lambda p: edit_tensors(p / SAFETENSORS, _drop("lm_head.weight")),
                                 r"missing tensors \['lm_head\.weight'\]"),
    "unexpected tensor": (lambda p: edit_tensors(p / SAFETENSORS,
                                                 _add("model.layers.0.self_attn.q_norm.weight", torch.ones(16))),
                          r"unexpected tensors \['model\.layers\.0\.self_attn\.q_norm\.weight'\]"),
    "mis-shaped tensor": (lambda p: edit_tensors(p / SAFETENSORS, _reshape("model.layers.0.self_attn.k_proj.weight")),
                          r"model\.safetensors: tensor model\.layers\.0\.self_attn\.k_proj\.weight has shape "
                          r"\(32, 63\), the model expects \(32, 64\)"),
    "only *.bin files": (_only_bin, r"has no \*\.safetensors files \(found \['pytorch_model\.bin'\]: convert"),
    "no weight files at all": (lambda p: (p / SAFETENSORS).unlink(), r"has no \*\.safetensors files$"),
    "corrupted safetensors": (_corrupt, r"model\.safetensors: not a readable safetensors file"),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_malformed_checkpoint_raises_checkpoint_error(tiny_dir, tmp_path, case):
    path = copy_checkpoint(tiny_dir[0], tmp_path / "ckpt")
    break_it, message = BROKEN[case]
    break_it(path)
    with pytest.raises(CheckpointError, match=message):
        load(TINY, path)


def test_not_a_directory(tiny_dir, tmp_path):
    with pytest.raises(CheckpointError, match="is not a directory"):
        load(TINY, tiny_dir[0] / "config.json")
    with pytest.raises(CheckpointError, match="is not a directory"):
        load(TINY, tmp_path / "does-not-exist")


@pytest.fixture(scope="module")
def sharded_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("sharded_ckpt")
    save_hf(TINY, directory, max_shard_size="100KB")
    return directory


def test_index_naming_a_missing_shard(sharded_dir, tmp_path):
    path = copy_checkpoint(sharded_dir, tmp_path / "ckpt")
    index = json.loads((path / "model.safetensors.index.json").read_text())
    shard = sorted(set(index["weight_map"].values()))[-1]
    (path / shard).unlink()
    with pytest.raises(CheckpointError, match=rf"lists {shard}, which is not in"):
        load(TINY, path)


def test_index_without_weight_map(sharded_dir, tmp_path):
    path = copy_checkpoint(sharded_dir, tmp_path / "ckpt")
    (path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}}))
    with pytest.raises(CheckpointError, match="not a safetensors index with a weight_map"):
        load(TINY, path)


def test_corrupted_shard(sharded_dir, tmp_path):
    path = copy_checkpoint(sharded_dir, tmp_path / "ckpt")
    index = json.loads((path / "model.safetensors.index.json").read_text())
    shard = path / sorted(set(index["weight_map"].values()))[0]
    shard.write_bytes(shard.read_bytes()[:50])
    with pytest.raises(CheckpointError, match=rf"{shard.name}: cannot read tensors"):
        load(TINY, path)


def test_errors_come_before_any_weights_are_allocated_on_the_device(tiny_dir, tmp_path, monkeypatch):
    """Config and file checks run before the model is built (build_model raises before init or load)."""
    import runtime.live.executor as executor

    path = copy_checkpoint(tiny_dir[0], tmp_path / "ckpt")
    edit_config(path, num_hidden_layers=3)
    built = []
    monkeypatch.setattr(executor, "LlamaForCausalLM", lambda spec: built.append(spec))
    with pytest.raises(CheckpointError, match="num_layers: model=2, checkpoint=3"):
        load(TINY, path)
    assert built == []
