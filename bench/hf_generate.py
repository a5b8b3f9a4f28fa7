"""The Hugging Face baseline of ``bench/live_throughput.py``: ``transformers.LlamaForCausalLM.generate`` on static
batches (left-padded, greedy, EOS disabled, each batch run to its longest request), loaded with our weights; the
model of its forwards for the roofline, and the greedy agreement of two systems' outputs."""
from __future__ import annotations

import time

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm


def hf_model(spec, state_dict, device: torch.device, dtype: torch.dtype):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=spec.vocab_size, hidden_size=spec.hidden_size, intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers, num_attention_heads=spec.num_heads, num_key_value_heads=spec.num_kv_heads,
        head_dim=spec.head_dim, max_position_embeddings=spec.max_model_len, rms_norm_eps=spec.rms_norm_eps,
        rope_theta=spec.rope_theta, tie_word_embeddings=spec.tie_word_embeddings, attention_bias=False,
        mlp_bias=False, bos_token_id=None, eos_token_id=None, pad_token_id=0, use_cache=True,
    )
    with torch.device(device):
        model = LlamaForCausalLM(config)  # HF's own init, overwritten below
    model = model.to(dtype)
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    missing = [m for m in missing if not (spec.tie_word_embeddings and m == "lm_head.weight")]
    if missing or unexpected:
        raise RuntimeError(f"HF model: missing {missing}, unexpected {unexpected}")
    if spec.tie_word_embeddings and model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr():
        raise RuntimeError("HF model: lm_head is not tied to embed_tokens")
    # .to(dtype) cast the rotary frequencies too; HF keeps them in fp32 (as our rope_tables does).
    rotary = model.model.rotary_emb
    inv_freq, _ = rotary.compute_default_rope_parameters(config)
    rotary.inv_freq = inv_freq.to(device)
    rotary.original_inv_freq = inv_freq.clone().to(device)
    return model.eval().requires_grad_(False)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def hf_batches(num_requests: int, batch_size: int) -> list[range]:
    return [range(s, min(s + batch_size, num_requests)) for s in range(0, num_requests, batch_size)]


def run_hf(model, prompts: list[np.ndarray], out_lens: np.ndarray, batch_size: int, device: torch.device,
           progress: bool) -> dict:
    from transformers import GenerationConfig

    useful = padded = prompt_tokens = padded_prompt = 0
    outputs: dict[str, list[int]] = {}
    batches = hf_batches(len(prompts), batch_size)
    per_batch = []
    elapsed = 0.0
    cpu0 = time.process_time()
    for idx in tqdm(batches, desc=f"hf/B={batch_size}", unit="batch", leave=False, disable=not progress,
                    dynamic_ncols=True):
        lens = [len(prompts[i]) for i in idx]
        width = max(lens)
        ids = np.zeros((len(idx), width), dtype=np.int64)
        mask = np.zeros((len(idx), width), dtype=np.int64)
        for row, i in enumerate(idx):  # left padding
            ids[row, width - lens[row]:] = prompts[i]
            mask[row, width - lens[row]:] = 1
        new = int(max(out_lens[i] for i in idx))
        input_ids = torch.from_numpy(ids).to(device)
        attention_mask = torch.from_numpy(mask).to(device)
        _sync(device)
        t0 = time.perf_counter()
        gen = GenerationConfig(do_sample=False, num_beams=1, use_cache=True, eos_token_id=None, bos_token_id=None,
                               pad_token_id=0, max_new_tokens=new, min_new_tokens=new)
        out = model.generate(input_ids=input_ids, attention_mask=attention_mask, generation_config=gen)
        out = out.cpu()
        dt_s = time.perf_counter() - t0
        elapsed += dt_s
        generated = out[:, width:]
        if generated.shape[1] != new:
            raise RuntimeError(f"HF generated {generated.shape[1]} tokens for a batch asked for {new}")
        for row, i in enumerate(idx):
            outputs[f"r{i}"] = generated[row, : int(out_lens[i])].tolist()
        useful += int(sum(out_lens[i] for i in idx))
        padded += len(idx) * new
        prompt_tokens += sum(lens)
        padded_prompt += len(idx) * width
        per_batch.append((len(idx), width, new, dt_s))
    cpu_s = time.process_time() - cpu0
    return {
        "system": f"hf/B={batch_size}",
        "kind": "hf",
        "scheduler": "static",
        "hf_batch_size": batch_size,
        "num_requests": len(prompts),
        "num_finished": len(prompts),
        "requested_output_tokens": int(out_lens.sum()),
        "useful_output_tokens": useful,
        "sampled_tokens": int(sum(len(v) for v in outputs.values())),
        "padded_output_tokens": padded,
        "prompt_tokens": prompt_tokens,
        "padded_prompt_tokens": padded_prompt,
        "num_preemptions": 0,
        "wall_s": elapsed,
        "cpu_s": cpu_s,
        "output_tok_per_s": useful / elapsed,
        "steps": int(sum(n for _, _, n, _ in per_batch)),
        "mean_tokens_per_step": np.nan,
        "mean_decode_batch": float(np.mean([b for b, _, _, _ in per_batch])),
        "max_num_seqs": batch_size,
        "token_budget": np.nan,
        "_batches": per_batch,
        "_outputs": outputs,
    }


def hf_batch_steps(prompt_len: int, batch: int, new_tokens: int) -> pd.DataFrame:
    """HF's forwards for one static batch: a padded prefill of ``batch x prompt_len``, then ``new_tokens - 1``
    decodes over the padded cache (the last sampled token is never fed back)."""
    k = np.arange(1, new_tokens)
    ctx = prompt_len + k  # keys a decode reads, its own included
    return pd.DataFrame({
        "tokens": np.r_[batch * prompt_len, np.full(len(k), batch)],
        "sampled": np.full(new_tokens, batch),
        "kv_read_tokens": np.r_[0, batch * (ctx - 1)],
        "attn_pairs": np.r_[batch * prompt_len * (prompt_len + 1) // 2, batch * ctx],
        "decode_batch": np.r_[0, np.full(len(k), batch)],
    })


def agreement(ours: dict[str, list[int]], hf: dict[str, list[int]]) -> tuple[float, float]:
    """(share of requests with identical outputs, share of output tokens before each request's first mismatch)."""
    same = prefix = total = 0
    for req_id, a in ours.items():
        b = hf.get(req_id, [])
        n = 0
        while n < min(len(a), len(b)) and a[n] == b[n]:
            n += 1
        same += a == b
        prefix += n
        total += len(a)
    return same / max(len(ours), 1), prefix / max(total, 1)
