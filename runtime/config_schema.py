"""Config validation: every key of a composed config is known, of its type, and in its range, before anything runs.

``validate_config(cfg)`` (first thing in ``runtime.cli.build``) raises one ``ConfigError`` naming the full dotted
key, what was wrong and what is allowed, e.g.
``scheduler.toke_budget: unknown key for heuristics.sarathi.SarathiScheduler; did you mean token_budget? ...``.

Where a schema comes from:

* **``_target_`` nodes** (scheduler, workload, model, hardware, cost_model, runtime, logger, and nested ones such as
  ``scheduler.fallback``): derived from the target's signature, so a new plugin needs no schema. The allowed keys
  are the parameters of ``inspect.signature(target)`` (a dataclass's fields for ``ModelSpec`` and the like) plus
  Hydra's own (``_target_``, ``_convert_``, ``_partial_``, ``_recursive_``, ``_args_``). A ``**base`` parameter
  forwards to the parent classes' ``__init__`` (``BaseScheduler``'s convention), whose parameters are allowed too;
  a ``**kwargs`` that does not forward to a keyword-only parent leaves the node open (unknown keys pass), except
  where ``KWARGS_TO`` names the function it forwards to. A mapping argument with fixed keys (``workload.arrival``,
  ``scheduler.cacheopt``: ``_mapping_keys``) has its keys checked too. Annotations give the types: ``int``,
  ``float``, ``str``, ``bool``, ``None``, mappings and sequences are checked; anything else (``ModelSpec``,
  ``Callable``) is not.
* **Run-wide blocks** (``seed``, ``kv``, ``metrics``, ``results``, ``oracle``, ``slo``, ``task``, ``cluster``, ...):
  the dataclasses of ``runtime.config_blocks``, read the same way; a ``_target_`` node inside one (``cluster.router``)
  is checked as above. A top-level key is allowed when it is a field of ``RunWide``, a config group (a folder of
  ``conf/``) or a key of ``conf/config.yaml``; a block with no dataclass there is not checked inside.
* **Ranges and choices** (``RULES``): by parameter name, for every ``_target_`` node that has that parameter, and by
  dataclass field metadata for the run-wide blocks. They cover what a constructor would otherwise accept or only
  reject with a ``TypeError``: sizes ``>= 1``, rates and times ``> 0``, fractions in ``[0, 1]``.

Types: ``bool`` is not an ``int``; an ``int`` is a ``float``; ``None`` only where the annotation allows it.
Values are checked after interpolation; a value that cannot be resolved is left to the code that resolves it.
"""
from __future__ import annotations

import dataclasses
import difflib
import inspect
from pathlib import Path
from typing import Any

from hydra.utils import get_object
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from runtime import config_blocks
from runtime.config_blocks import (AT_LEAST_1, FRACTION, NON_NEGATIVE, OPEN_FRACTION, POSITIVE, SHARE, Rule,
                                   RunWide)
from runtime.core.errors import ConfigError

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
HYDRA_KEYS = ("_target_", "_convert_", "_partial_", "_recursive_", "_args_")
# Objects build() passes to constructors: not required in YAML, and not listed as allowed in messages.
PASSED_BY_BUILD = frozenset({"block_manager", "cost_model", "slo_classes", "max_model_len", "kv_transfer",
                             "memory_plan", "seed", "model"})
# A `**kwargs` that forwards to a function rather than to a parent class: target -> that function.
KWARGS_TO = {"solvers.oracle.OracleScheduler": "solvers.oracle.oracle_params"}


def _rules() -> dict[str, Rule]:
    """``RULES``: parameter name -> rule, for every ``_target_`` node (choices come from the code's own tuples)."""
    from heuristics.length_estimators import KINDS
    from runtime.core.base_scheduler import PREEMPTION_MODES
    from runtime.sim.arrivals import PROCESSES
    from runtime.sim.workload import LENGTH_POLICIES
    from solvers.solve import BACKENDS

    rules = {name: AT_LEAST_1 for name in (
        "max_num_seqs", "token_budget", "chunk_align", "min_chunk", "max_budget", "auto_decode_batch", "scan_limit",
        "max_num_batched_tokens", "len_min_samples", "len_window", "max_candidates", "chunk_cap", "max_tokens",
        "num_layers", "hidden_size", "num_heads", "num_kv_heads", "head_dim", "intermediate_size", "vocab_size",
        "num_params", "dtype_bytes", "tensor_parallel_size", "max_requests", "max_decode_gather", "threads",
        "max_points")}
    rules.update({name: POSITIVE for name in (
        "gpu_memory_gb", "peak_tflops", "hbm_bandwidth_gbps", "pcie_bandwidth_gbps", "rope_theta", "rms_norm_eps",
        "time_scale", "target_rate", "duration_s", "length_scale", "rate", "cv", "time_limit_s", "cpu_kv_cache_gb",
        "connect_timeout_s", "init_timeout_s", "finish_timeout_s", "len_prior_tokens")})
    rules.update({name: NON_NEGATIVE for name in (
        "auto_decode_context", "w_comp", "w_kv", "urgent_frac", "beta0", "beta1", "beta2", "beta3", "beta4",
        "beta5", "s_knee", "engine_overhead_s", "per_seq_overhead_s", "n_knee", "noise_cv", "start_s", "num_requests",
        "num_train_requests", "warmup_steps", "eps", "eta", "urgency_theta", "weight", "noise_sigma", "beta",
        "settle_amplitude")})
    rules.update(quantile=FRACTION, alpha=Rule(gt=0, lt=1), settle_decay=Rule(ge=0, lt=1), rate_window_s=POSITIVE,
                 hoeffding_n=AT_LEAST_1)
    rules.update({name: OPEN_FRACTION for name in ("margin", "kv_headroom", "mip_gap", "c_done")})
    rules.update({name: SHARE for name in ("compute_efficiency", "memory_efficiency", "memory_utilization")})
    rules.update(
        max_model_len=Rule(ge=2), group_ratio=Rule(ge=1),
        preemption_mode=Rule(choices=PREEMPTION_MODES), process=Rule(choices=PROCESSES),
        length_policy=Rule(choices=LENGTH_POLICIES), backend=Rule(choices=tuple(sorted(BACKENDS))),
        len_estimator=Rule(choices=KINDS), group_by=Rule(choices=("class", "ratio")),
        preempt_victim=Rule(choices=("auto", "largest_slack", "latest_arrival")),
        slo_semantics=Rule(choices=("gap", "iteration")), kv_mode=Rule(choices=("physical", "footprint")),
        mode=Rule(choices=("online", "offline", "disabled")),
    )
    return rules


def _mapping_keys() -> dict[str, tuple[str, ...]]:
    """Plain mapping arguments whose keys are fixed: parameter name -> allowed keys."""
    from heuristics.kv_competition import CacheOPTParams

    return {"arrival": ("process", "rate", "cv"), "cacheopt": tuple(f.name for f in dataclasses.fields(CacheOPTParams))}


def validate_config(cfg: DictConfig, *, conf_dir: Path = CONF_DIR) -> None:
    """Check every key of ``cfg`` (module docstring); raise ``ConfigError`` naming the first bad one."""
    rules = _rules()
    groups = {p.name for p in conf_dir.iterdir() if p.is_dir()} if conf_dir.is_dir() else set()
    root = OmegaConf.load(conf_dir / "config.yaml") if (conf_dir / "config.yaml").is_file() else {}
    blocks = {f.name: f for f in dataclasses.fields(RunWide)}
    allowed = sorted(set(blocks) | groups | {k for k in root if k != "defaults"})
    for key in cfg.keys():
        if key not in allowed:
            raise ConfigError(_unknown(str(key), key, "the root config", allowed))
    for key in cfg.keys():
        value = _get(cfg, key)
        if key in blocks:
            _check_field(str(key), value, blocks[key], rules)
        elif isinstance(value, DictConfig):
            _walk(str(key), value, rules)


def _walk(path: str, node: DictConfig, rules: dict[str, Rule]) -> None:
    """Check a ``_target_`` node against its signature, and look inside any other mapping for ``_target_`` nodes."""
    if node.get("_target_") is None:
        for key in node.keys():
            value = _get(node, key)
            if isinstance(value, DictConfig):
                _walk(f"{path}.{key}", value, rules)
        return
    target_name = str(node["_target_"])
    try:
        target = get_object(target_name)
    except Exception as error:  # noqa: BLE001 - any import failure is a bad _target_
        raise ConfigError(f"{path}._target_: cannot import {target_name} ({type(error).__name__}: {error})") from None
    params, open_ = _parameters(target, target_name)
    listed = sorted(k for k in params if k not in PASSED_BY_BUILD)
    for key in node.keys():
        key = str(key)
        if key in HYDRA_KEYS:
            continue
        if key not in params:
            if open_:
                continue
            raise ConfigError(_unknown(f"{path}.{key}", key, target_name, listed))
        value = _get(node, key)
        _check_type(f"{path}.{key}", value, params[key].annotation)
        if key in rules:
            _check_rule(f"{path}.{key}", value, rules[key])
        if isinstance(value, DictConfig):
            fixed = _mapping_keys().get(key)
            for inner in value.keys() if fixed is not None and value.get("_target_") is None else ():
                if str(inner) not in fixed:
                    raise ConfigError(_unknown(f"{path}.{key}.{inner}", str(inner), f"`{path}.{key}`", sorted(fixed)))
            _walk_nested(f"{path}.{key}", value, rules)
    if not node.get("_partial_", False):
        missing = [n for n, p in params.items() if p.default is inspect.Parameter.empty and n not in node
                   and n not in PASSED_BY_BUILD]
        if missing:
            raise ConfigError(f"{path}.{missing[0]}: required by {target_name} but not set")


def _walk_nested(path: str, node: DictConfig, rules: dict[str, Rule]) -> None:
    """A plain mapping argument (``workload.arrival``, ``workload.applications``): ranges by key name."""
    if node.get("_target_") is not None:
        _walk(path, node, rules)
        return
    for key in node.keys():
        value = _get(node, key)
        if isinstance(value, DictConfig):
            _walk_nested(f"{path}.{key}", value, rules)
        elif str(key) in rules:
            _check_rule(f"{path}.{key}", value, rules[str(key)])


def _parameters(target, target_name: str) -> tuple[dict[str, inspect.Parameter], bool]:
    """Keyword parameters of ``target`` (following ``**base`` up the MRO), and whether unknown keys are allowed."""
    forward = KWARGS_TO.get(target_name)
    chain = [cls.__init__ for cls in target.__mro__ if "__init__" in vars(cls) and cls is not object] \
        if inspect.isclass(target) else [target]
    params: dict[str, inspect.Parameter] = {}
    for index, function in enumerate(chain):
        sig = inspect.signature(function)
        items = [p for p in sig.parameters.values() if p.name != "self"]
        if index > 0 and any(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
                             for p in items):
            return params, forward is None  # `**kwargs` does not forward here: a parent with positional arguments
        for p in items:
            if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
                params.setdefault(p.name, p)
        if not any(p.kind is p.VAR_KEYWORD for p in items):
            return params, False
        if forward is not None:
            for p in inspect.signature(get_object(forward)).parameters.values():
                if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
                    params.setdefault(p.name, p)
            return params, False
    return params, True  # a `**kwargs` with nowhere known to go


def _check_field(path: str, value: Any, f: dataclasses.Field, rules: dict[str, Rule]) -> None:
    schema = _dataclass_type(f)
    if schema is not None and isinstance(value, DictConfig):
        fields = {g.name: g for g in dataclasses.fields(schema)}
        for key in value.keys():
            if str(key) not in fields:
                raise ConfigError(_unknown(f"{path}.{key}", str(key), f"`{path}`", sorted(fields)))
            _check_field(f"{path}.{key}", _get(value, key), fields[str(key)], rules)
        return
    if isinstance(value, DictConfig) and value.get("_target_") is not None:
        _walk(path, value, rules)
        return
    _check_type(path, value, f.type if schema is None else "dict")
    rule = f.metadata.get("rule") or rules.get(f.name)
    if rule is not None:
        _check_rule(path, value, rule)


def _dataclass_type(f: dataclasses.Field):
    name = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "")
    candidate = getattr(config_blocks, name, None)
    return candidate if dataclasses.is_dataclass(candidate) else None


def _kinds(annotation) -> set[str] | None:
    """``'int | None'`` -> ``{'int', 'None'}``; ``None`` when any part is a type this module does not check."""
    if annotation is inspect.Parameter.empty:
        return None
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
    parts, depth, current = [], 0, ""
    for char in text.replace("typing.", ""):
        if char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
        if char == "|" and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    names = {"int": "int", "float": "float", "str": "str", "bool": "bool", "None": "None", "NoneType": "None",
             "Path": "str", "dict": "dict", "Mapping": "dict", "MutableMapping": "dict", "list": "list",
             "tuple": "list", "Sequence": "list"}
    kinds = set()
    for part in parts:
        base = part.split("[")[0].strip().strip("'\"")
        if base not in names:
            return None
        kinds.add(names[base])
    return kinds


def _check_type(path: str, value: Any, annotation) -> None:
    kinds = _kinds(annotation)
    if kinds is None or value is _UNRESOLVED:
        return
    ok = (value is None and "None" in kinds
          or isinstance(value, bool) and "bool" in kinds
          or not isinstance(value, bool) and (isinstance(value, int) and kinds & {"int", "float"}
                                              or isinstance(value, float) and "float" in kinds)
          or isinstance(value, str) and "str" in kinds
          or isinstance(value, DictConfig) and "dict" in kinds
          or isinstance(value, ListConfig) and "list" in kinds)
    if not ok:
        expected = " or ".join(sorted(k if k != "None" else "null" for k in kinds))
        shown = "null" if value is None else f"{value!r} ({type(value).__name__})"
        raise ConfigError(f"{path}: expected {expected}, got {shown}")


def _check_rule(path: str, value: Any, rule: Rule) -> None:
    if value is not _UNRESOLVED and not isinstance(value, (DictConfig, ListConfig)):
        rule.check(path, value)


_UNRESOLVED = object()


def _get(node: DictConfig, key) -> Any:
    """``node[key]`` resolved; ``_UNRESOLVED`` when its interpolation fails (reported by the code that resolves it)."""
    try:
        return node[key]
    except OmegaConfBaseException:
        return _UNRESOLVED


def _unknown(path: str, key: str, owner: str, allowed: list[str]) -> str:
    close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
    hint = f"did you mean {close[0]}? " if close else ""
    return f"{path}: unknown key for {owner}; {hint}allowed: {', '.join(allowed)}"
