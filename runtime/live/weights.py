"""Weights for the live model: seeded random initialisation, or a local Hugging Face checkpoint directory.

A checkpoint directory holds ``config.json`` and either ``model.safetensors`` or shards listed in
``model.safetensors.index.json`` (``weight_map``: tensor name -> file). Tensor names are HF's
``LlamaForCausalLM`` names, which are ours, so loading is a name-by-name copy with a dtype cast. Nothing is
downloaded. Every way a directory can be wrong is a ``CheckpointError`` that names the file and the field or
tensor, raised before any request runs: no config, unreadable JSON, an architecture or shape that disagrees
with the ``model=`` config, no weight files, a missing, unexpected or mis-shaped tensor.

Random initialisation follows HF's ``initializer_range`` convention: every matrix ``N(0, 0.02²)``, every RMSNorm
weight 1, drawn from one ``torch.Generator`` seeded with ``seed`` on the model's device.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from runtime.core.errors import CheckpointError
from runtime.sim.specs import ModelSpec

INIT_STD = 0.02
# HF config.json key -> (ModelSpec field, default when absent given the other keys).
_CONFIG_FIELDS = {
    "num_hidden_layers": "num_layers",
    "hidden_size": "hidden_size",
    "num_attention_heads": "num_heads",
    "num_key_value_heads": "num_kv_heads",
    "head_dim": "head_dim",
    "intermediate_size": "intermediate_size",
    "vocab_size": "vocab_size",
    "rope_theta": "rope_theta",
    "rms_norm_eps": "rms_norm_eps",
    "tie_word_embeddings": "tie_word_embeddings",
}
# Buffers some exporters save that carry no weights.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


@torch.no_grad()
def init_random(model: nn.Module, seed: int) -> None:
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(int(seed))
    for name, param in model.named_parameters():
        if name.endswith("norm.weight"):
            param.fill_(1.0)
        else:
            param.normal_(0.0, INIT_STD, generator=gen)


def read_hf_config(path: Path) -> dict:
    config_file = path / "config.json"
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {str(path)!r} is not a directory")
    if not config_file.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} has no config.json")
    try:
        config = json.loads(config_file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{config_file}: not valid JSON ({error})") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{config_file}: expected a JSON object, got {type(config).__name__}")
    return config


def spec_fields_from_hf_config(config: dict, source: str = "config.json") -> dict:
    """The ModelSpec fields a Llama ``config.json`` determines (HF's defaults where keys are absent)."""
    model_type = config.get("model_type")
    architectures = config.get("architectures") or []
    if model_type != "llama" and "LlamaForCausalLM" not in architectures:
        raise CheckpointError(f"{source}: model_type={model_type!r}, architectures={architectures!r}; only Llama "
                              "checkpoints (model_type 'llama') are supported")
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size"):
        if not isinstance(config.get(key), int) or config[key] <= 0:
            raise CheckpointError(f"{source}: {key} must be a positive integer, got {config.get(key)!r}")
    if config.get("rope_scaling"):
        raise CheckpointError(f"{source}: rope_scaling={config['rope_scaling']!r} is not supported (plain RoPE only)")
    # transformers >= 5 writes {"rope_theta": ..., "rope_type": "default"} here instead of a top-level rope_theta.
    rope = config.get("rope_parameters")
    if rope is not None and (not isinstance(rope, dict) or rope.get("rope_type", "default") != "default"):
        raise CheckpointError(f"{source}: rope_parameters={rope!r} is not supported (plain RoPE only)")
    if config.get("attention_bias") or config.get("mlp_bias"):
        raise CheckpointError(f"{source}: attention_bias/mlp_bias are not supported (Llama has no biases)")
    values = dict(config)
    if rope is not None and "rope_theta" in rope:
        values["rope_theta"] = rope["rope_theta"]
    values.setdefault("num_key_value_heads", config["num_attention_heads"])
    if values.get("head_dim") is None:
        values["head_dim"] = config["hidden_size"] // config["num_attention_heads"]
    values.setdefault("rope_theta", 10000.0)
    values.setdefault("rms_norm_eps", 1e-6)
    values.setdefault("tie_word_embeddings", False)
    return {field: values[key] for key, field in _CONFIG_FIELDS.items()}


def check_config_matches(spec: ModelSpec, config: dict, source: str) -> None:
    fields = spec_fields_from_hf_config(config, source)
    wrong = []
    for field, value in fields.items():
        ours = getattr(spec, field)
        same = abs(float(ours) - float(value)) <= 1e-12 * max(1.0, abs(float(ours))) if isinstance(ours, float) \
            else ours == value
        if not same:
            wrong.append(f"{field}: model={ours!r}, checkpoint={value!r}")
    if wrong:
        raise CheckpointError(f"{source} does not match model={spec.name}: " + "; ".join(wrong)
                              + " (pick the model config of these shapes, or write one)")


def weight_files(path: Path) -> dict[str, Path]:
    """Tensor name -> safetensors file."""
    from safetensors import safe_open

    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as error:
            raise CheckpointError(f"{index}: not a safetensors index with a weight_map ({error!r})") from None
        files = {name: path / file for name, file in weight_map.items()}
        for file in set(files.values()):
            if not file.is_file():
                raise CheckpointError(f"{index} lists {file.name}, which is not in {str(path)!r}")
        return files
    single = sorted(path.glob("*.safetensors"))
    if not single:
        bins = sorted(p.name for p in path.glob("*.bin"))
        hint = f" (found {bins}: convert pickled .bin weights to safetensors)" if bins else ""
        raise CheckpointError(f"checkpoint {str(path)!r} has no *.safetensors files{hint}")
    files: dict[str, Path] = {}
    for file in single:
        try:
            with safe_open(str(file), framework="pt") as f:
                for name in f.keys():
                    files[name] = file
        except Exception as error:  # safetensors raises its own SafetensorError and OSError
            raise CheckpointError(f"{file}: not a readable safetensors file ({error})") from None
    return files


def check_checkpoint(path: str | Path, spec: ModelSpec) -> dict[str, Path]:
    """Every check that needs no weights read: config, files, tensor names. Returns the weight map."""
    path = Path(path).expanduser()
    config = read_hf_config(path)
    check_config_matches(spec, config, str(path / "config.json"))
    return weight_files(path)


@torch.no_grad()
def load_checkpoint(model: nn.Module, path: str | Path, files: dict[str, Path] | None = None) -> None:
    """Copy every tensor of the checkpoint into ``model`` (cast to its dtype and device)."""
    from safetensors import safe_open

    path = Path(path).expanduser()
    files = weight_files(path) if files is None else files
    params = dict(model.named_parameters(remove_duplicate=False))
    tied = getattr(getattr(model, "spec", None), "tie_word_embeddings", False)
    names = {n for n in files if not n.endswith(_IGNORED_SUFFIXES)}
    expected = set(params) - ({"lm_head.weight"} if tied else set())
    missing = expected - names
    unexpected = names - set(params)
    if missing or unexpected:
        raise CheckpointError(f"checkpoint {str(path)!r}: missing tensors {sorted(missing)[:5]}"
                              f"{' ...' if len(missing) > 5 else ''}, unexpected tensors {sorted(unexpected)[:5]}"
                              f"{' ...' if len(unexpected) > 5 else ''}")
    by_file: dict[Path, list[str]] = {}
    for name in sorted(names):
        by_file.setdefault(files[name], []).append(name)
    for file, tensor_names in by_file.items():
        try:
            with safe_open(str(file), framework="pt") as f:
                for name in tensor_names:
                    tensor = f.get_tensor(name)
                    param = params[name]
                    if tuple(tensor.shape) != tuple(param.shape):
                        raise CheckpointError(f"{file.name}: tensor {name} has shape {tuple(tensor.shape)}, "
                                              f"the model expects {tuple(param.shape)}")
                    param.copy_(tensor.to(dtype=param.dtype))
        except CheckpointError:
            raise
        except Exception as error:
            raise CheckpointError(f"{file}: cannot read tensors ({error})") from None
