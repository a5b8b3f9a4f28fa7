"""A Llama-architecture decoder in plain PyTorch that runs one forward pass over a mixed, paged batch.

Shapes (``T`` tokens in the step, ``d`` hidden, ``H`` query heads, ``H_kv`` KV heads, ``d_h`` head dim)::

    h_0 = E[x]                                                 # token embeddings, [T, d]
    for each layer l:
        a   = RMSNorm(h) = h / sqrt(mean(h²) + ε) ⊙ w          # input_layernorm (computed in fp32)
        q,k,v = a W_q, a W_k, a W_v                            # [T, H, d_h], [T, H_kv, d_h] ×2
        q,k = RoPE(q, pos), RoPE(k, pos)                       # rotate pairs (i, i + d_h/2) by pos·θ^(−2i/d_h)
        KV[slot(r, pos)] ← k, v                                # paged cache write
        o_r = softmax(q_r K_rᵀ/√d_h + M_r) V_r per sequence r  # K_r, V_r: r's whole context, read from its blocks
        h   = h + o W_o
        h   = h + W_down(SiLU(W_gate b) ⊙ W_up b),  b = RMSNorm(h)   # post_attention_layernorm
    logits = RMSNorm(h_s) W_lmᵀ   only for the rows s that sample

On one CPU thread, a step that samples 4 to 12 rows computes the LM head in vocabulary blocks of
``LM_HEAD_BLOCK_BYTES`` of ``W_lm`` (a block stays in L2 while every row uses it). Why: for so few rows the BLAS
behaves as if it swept the whole ``W_lm`` once per three rows (the step time jumps by one weight read at 4, 7 and
10 rows), and from 13 rows on as if it packed it once, so a decode step of 4–12 sequences cost a weight read per
three of them (llama_15m, whose LM head is 9.2M of its 14.5M weights: 18.1 ms for 12 decodes, 16.8 ms for
13), a staircase no cost model of the step's token counts follows. In blocks, ``W_lm`` is read from memory once:
12 decodes take 15.0 ms, and the step time grows by about the same amount per row from 1 to 12. Outside that
window, and with more threads (where each block's parallel region costs more than it saves), the one GEMM is as
fast or faster (``bench/live_lm_head.py``; BENCHMARKS.md, "The LM head staircase"). Every logit is one dot product
over ``d`` either way; only the kernel's summation order differs.

Each query head ``j`` reads KV head ``j // (H / H_kv)`` (grouped-query attention). The mask ``M_r`` lets query
``i`` of a chunk that starts at position ``q0`` see keys ``0 .. q0 + i``: a whole prefill (``q0 = 0``) is plain
causal attention, a later chunk sees every earlier chunk through the cache, and a decode sees its whole context.

The parameter names are Hugging Face's ``LlamaForCausalLM`` names (``model.layers.0.self_attn.q_proj.weight``,
...), so a local checkpoint loads by name and the logits test can copy weights across unchanged. What the
attention needs about the step (slots, masks, positions) is built once per step by ``runtime.live.batch`` and
shared by every layer.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from runtime.live.batch import StepBatch
from runtime.live.kv_cache import PagedKVCache
from runtime.sim.specs import ModelSpec

#: Sampled rows for which one CPU thread computes the LM head in vocabulary blocks (module docstring).
LM_HEAD_BLOCKED_ROWS = range(4, 13)
#: Bytes of ``W_lm`` per vocabulary block: a quarter of a 2 MiB L2 (448 rows of llama_15m in fp32).
LM_HEAD_BLOCK_BYTES = 512 * 1024


class RMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # In fp32 whatever the model dtype, as HF does: bf16 squares lose too much.
        dtype = x.dtype
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(dtype)


def rope_tables(spec: ModelSpec, max_positions: int, device: torch.device, dtype: torch.dtype
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin ``[max_positions, d_h]`` in HF's half-split layout (frequencies repeated for both halves)."""
    d_h = spec.head_dim
    inv_freq = 1.0 / (spec.rope_theta ** (torch.arange(0, d_h, 2, dtype=torch.int64, device=device).float() / d_h))
    pos = torch.arange(max_positions, device=device, dtype=torch.float32)
    freqs = torch.outer(pos, inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """``x`` [T, heads, d_h]; cos/sin [T, d_h]: x·cos + rotate_half(x)·sin, rotate_half(x) = (−x₂, x₁)."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    rotated = torch.cat((-x2, x1), dim=-1)
    return x * cos[:, None, :] + rotated * sin[:, None, :]


class Attention(nn.Module):
    def __init__(self, spec: ModelSpec, layer_idx: int) -> None:
        super().__init__()
        d, h, h_kv, d_h = spec.hidden_size, spec.num_heads, spec.num_kv_heads, spec.head_dim
        self.q_proj = nn.Linear(d, h * d_h, bias=False)
        self.k_proj = nn.Linear(d, h_kv * d_h, bias=False)
        self.v_proj = nn.Linear(d, h_kv * d_h, bias=False)
        self.o_proj = nn.Linear(h * d_h, d, bias=False)
        self.num_heads, self.num_kv_heads, self.head_dim = h, h_kv, d_h
        self.layer_idx = layer_idx
        self.scale = d_h ** -0.5

    def forward(self, x: torch.Tensor, batch: StepBatch, cache: PagedKVCache) -> torch.Tensor:
        t = x.shape[0]
        q = self.q_proj(x).view(t, self.num_heads, self.head_dim)
        k = self.k_proj(x).view(t, self.num_kv_heads, self.head_dim)
        v = self.v_proj(x).view(t, self.num_kv_heads, self.head_dim)
        q = apply_rope(q, batch.cos, batch.sin)
        k = apply_rope(k, batch.cos, batch.sin)
        k_cache, v_cache = cache.layer(self.layer_idx)
        k_cache.index_copy_(0, batch.slot_mapping, k)
        v_cache.index_copy_(0, batch.slot_mapping, v)
        out = torch.empty_like(q)
        for seg in batch.prefills:
            qs = q[seg.start:seg.end].transpose(0, 1).unsqueeze(0)  # [1, H, c, d_h]
            if seg.context_slots is None:
                # A whole prompt in one chunk: its keys are this step's own; plain causal attention.
                ks = k[seg.start:seg.end].transpose(0, 1).unsqueeze(0)
                vs = v[seg.start:seg.end].transpose(0, 1).unsqueeze(0)
                o = F.scaled_dot_product_attention(qs, ks, vs, is_causal=True, scale=self.scale, enable_gqa=True)
            else:
                # index_select, not advanced indexing: about 3x faster for a gather along dim 0 on CPU.
                ks = k_cache.index_select(0, seg.context_slots).transpose(0, 1).unsqueeze(0)  # [1, H_kv, ctx, d_h]
                vs = v_cache.index_select(0, seg.context_slots).transpose(0, 1).unsqueeze(0)
                o = F.scaled_dot_product_attention(qs, ks, vs, attn_mask=seg.mask, scale=self.scale,
                                                   enable_gqa=True)
            out[seg.start:seg.end] = o[0].transpose(0, 1)
        groups = self.num_heads // self.num_kv_heads
        for group in batch.decodes:
            # Decodes batched: contexts padded to the group's longest, padding masked out. The G = H/H_kv query
            # heads that share a KV head become G query rows of that head, so each KV head is read once and no
            # GQA expansion is needed: [D, H_kv, G, d_h] against [D, H_kv, L, d_h].
            num, length = group.slots.shape
            qd = q[group.start:group.end].view(num, self.num_kv_heads, groups, self.head_dim)
            flat = group.slots.view(-1)
            kd = k_cache.index_select(0, flat).view(num, length, self.num_kv_heads, self.head_dim).transpose(1, 2)
            vd = v_cache.index_select(0, flat).view(num, length, self.num_kv_heads, self.head_dim).transpose(1, 2)
            o = F.scaled_dot_product_attention(qd, kd, vd, attn_mask=group.mask, scale=self.scale)
            out[group.start:group.end] = o.reshape(num, self.num_heads, self.head_dim)
        return self.o_proj(out.view(t, self.num_heads * self.head_dim))


class MLP(nn.Module):
    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        d, i = spec.hidden_size, spec.intermediate_size
        self.gate_proj = nn.Linear(d, i, bias=False)
        self.up_proj = nn.Linear(d, i, bias=False)
        self.down_proj = nn.Linear(i, d, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, spec: ModelSpec, layer_idx: int) -> None:
        super().__init__()
        self.self_attn = Attention(spec, layer_idx)
        self.mlp = MLP(spec)
        self.input_layernorm = RMSNorm(spec.hidden_size, spec.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(spec.hidden_size, spec.rms_norm_eps)

    def forward(self, h: torch.Tensor, batch: StepBatch, cache: PagedKVCache) -> torch.Tensor:
        h = h + self.self_attn(self.input_layernorm(h), batch, cache)
        return h + self.mlp(self.post_attention_layernorm(h))


class LlamaBackbone(nn.Module):
    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(spec.vocab_size, spec.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(spec, i) for i in range(spec.num_layers))
        self.norm = RMSNorm(spec.hidden_size, spec.rms_norm_eps)


class LlamaForCausalLM(nn.Module):
    """The decoder plus LM head; ``forward`` returns the logits of ``batch.sample_indices`` rows only."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        self.model = LlamaBackbone(spec)
        self.lm_head = nn.Linear(spec.hidden_size, spec.vocab_size, bias=False)
        if spec.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def hidden_states(self, batch: StepBatch, cache: PagedKVCache) -> torch.Tensor:
        """Last layer's output for every token of the step, before the final norm: [T, d]."""
        h = self.model.embed_tokens(batch.input_ids)
        for layer in self.model.layers:
            h = layer(h, batch, cache)
        return h

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        x = self.model.norm(hidden)
        if x.shape[0] in LM_HEAD_BLOCKED_ROWS and x.device.type == "cpu" and torch.get_num_threads() == 1:
            return vocab_blocked_linear(x, self.lm_head.weight, lm_head_block_rows(x.shape[1], x.element_size()))
        return self.lm_head(x).float()

    @torch.inference_mode()
    def forward(self, batch: StepBatch, cache: PagedKVCache) -> torch.Tensor:
        hidden = self.hidden_states(batch, cache)
        return self.logits(hidden[batch.sample_indices])


def lm_head_block_rows(hidden_size: int, element_size: int) -> int:
    """Rows of ``W_lm`` per vocabulary block: ``LM_HEAD_BLOCK_BYTES`` of them, a multiple of 64, at least 64."""
    return max(64, LM_HEAD_BLOCK_BYTES // (hidden_size * element_size) // 64 * 64)


def vocab_blocked_linear(x: torch.Tensor, weight: torch.Tensor, block_rows: int) -> torch.Tensor:
    """``x Wᵀ`` in fp32, computed ``block_rows`` rows of ``W`` (vocabulary entries) at a time."""
    out = torch.empty(x.shape[0], weight.shape[0], dtype=torch.float32, device=x.device)
    for start in range(0, weight.shape[0], block_rows):
        out[:, start:start + block_rows] = F.linear(x, weight[start:start + block_rows])
    return out
