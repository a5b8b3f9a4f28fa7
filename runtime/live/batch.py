"""One step's model input, built once from a ``SchedulerOutput`` and the block tables, shared by every layer.

Token order in the step: prefill-phase members first (each a contiguous chunk of ``c`` tokens at positions
``q .. q+c−1``), then decodes (one token each, at position ``ctx − 1``), sorted by context length and split into
groups whose padded context gather ``D·L_max`` stays under ``max_decode_gather`` slots (bounds the memory of
batched decode attention; one group on small models).

For a chunk starting at ``q > 0`` the attention reads its whole context ``0 .. q+c−1`` from the cache through
``context_slots`` with mask ``M[i, j] = (j ≤ q + i)``; a chunk with ``q = 0`` attends to its own keys with plain
causal attention. A decode group reads ``slots [D, L_max]`` (the null slot past each context) with mask
``[D, 1, 1, L_max]``. ``sample_indices`` are the rows that emit a token: the last row of every final chunk and
every decode.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np
import torch

from runtime.core.outputs import SchedulerOutput


@dataclass(slots=True)
class PrefillSegment:
    start: int
    end: int
    # None when the chunk is a whole prompt (q = 0): it attends to its own keys.
    context_slots: torch.Tensor | None
    mask: torch.Tensor | None


@dataclass(slots=True)
class DecodeGroup:
    start: int
    end: int
    slots: torch.Tensor  # [D, L_max]
    mask: torch.Tensor  # [D, 1, 1, L_max] bool


@dataclass(slots=True)
class StepBatch:
    input_ids: torch.Tensor  # [T]
    positions: torch.Tensor  # [T]
    cos: torch.Tensor  # [T, d_h]
    sin: torch.Tensor
    slot_mapping: torch.Tensor  # [T]: where each token's K and V are written
    prefills: list[PrefillSegment]
    decodes: list[DecodeGroup]
    sample_indices: torch.Tensor  # rows whose logits are sampled
    sample_req_ids: list[str]
    # Position of each sampled token (the next position of its request).
    sample_positions: list[int]

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.shape[0])


# (req_id, start, end) -> token ids at positions start .. end-1.
TokenSource = Callable[[str, int, int], np.ndarray]


def context_slots(table: Sequence[int], length: int, block_size: int) -> np.ndarray:
    """Slots of positions ``0 .. length−1`` of a request with block table ``table``."""
    blocks = np.asarray(table[: -(-length // block_size)], dtype=np.int64)
    return (blocks[:, None] * block_size + np.arange(block_size, dtype=np.int64)).ravel()[:length]


def build_step_batch(
    output: SchedulerOutput,
    tables: Mapping[str, Sequence[int]],
    *,
    block_size: int,
    null_slot: int,
    tokens: TokenSource,
    cos_table: torch.Tensor,
    sin_table: torch.Tensor,
    device: torch.device,
    max_decode_gather: int = 1 << 21,
) -> StepBatch:
    ids: list[np.ndarray] = []
    pos: list[np.ndarray] = []
    slots: list[np.ndarray] = []
    prefills: list[PrefillSegment] = []
    sample_rows: list[int] = []
    sample_req_ids: list[str] = []
    sample_positions: list[int] = []
    done = set(output.prefill_done_req_ids)
    row = 0
    for req_id, (c, q) in zip(output.prefill_req_ids, output.prefill_chunks):
        ctx = q + c
        all_slots = context_slots(tables[req_id], ctx, block_size)
        ids.append(tokens(req_id, q, ctx))
        pos.append(np.arange(q, ctx, dtype=np.int64))
        slots.append(all_slots[q:])
        if q == 0:
            prefills.append(PrefillSegment(row, row + c, None, None))
        else:
            mask = torch.arange(ctx, device=device)[None, :] <= torch.arange(q, ctx, device=device)[:, None]
            prefills.append(PrefillSegment(row, row + c, torch.from_numpy(all_slots).to(device), mask))
        row += c
        if req_id in done:
            sample_rows.append(row - 1)
            sample_req_ids.append(req_id)
            sample_positions.append(ctx)
    decodes: list[DecodeGroup] = []
    if output.decode_req_ids:
        order = sorted(range(len(output.decode_req_ids)), key=lambda i: -output.decode_context_lens[i])
        group: list[tuple[str, int]] = []
        for i in order:
            req_id, ctx = output.decode_req_ids[i], output.decode_context_lens[i]
            # Sorted by decreasing context, so the group's first member sets L_max.
            if group and (len(group) + 1) * group[0][1] > max_decode_gather:
                row = _decode_group(group, row, tables, block_size, null_slot, tokens, device, ids, pos, slots,
                                    decodes, sample_rows, sample_req_ids, sample_positions)
                group = []
            group.append((req_id, ctx))
        row = _decode_group(group, row, tables, block_size, null_slot, tokens, device, ids, pos, slots, decodes,
                            sample_rows, sample_req_ids, sample_positions)
    positions = torch.from_numpy(np.concatenate(pos)).to(device)
    return StepBatch(
        input_ids=torch.from_numpy(np.concatenate(ids).astype(np.int64)).to(device),
        positions=positions,
        cos=cos_table[positions],
        sin=sin_table[positions],
        slot_mapping=torch.from_numpy(np.concatenate(slots)).to(device),
        prefills=prefills,
        decodes=decodes,
        sample_indices=torch.tensor(sample_rows, dtype=torch.int64, device=device),
        sample_req_ids=sample_req_ids,
        sample_positions=sample_positions,
    )


def _decode_group(group, row, tables, block_size, null_slot, tokens, device, ids, pos, slots, decodes, sample_rows,
                  sample_req_ids, sample_positions) -> int:
    length = group[0][1]
    gather = np.full((len(group), length), null_slot, dtype=np.int64)
    lens = np.empty(len(group), dtype=np.int64)
    for k, (req_id, ctx) in enumerate(group):
        s = context_slots(tables[req_id], ctx, block_size)
        gather[k, :ctx] = s
        lens[k] = ctx
        ids.append(tokens(req_id, ctx - 1, ctx))
        pos.append(np.array([ctx - 1], dtype=np.int64))
        slots.append(s[ctx - 1:])
        sample_rows.append(row + k)
        sample_req_ids.append(req_id)
        sample_positions.append(ctx)
    lens_t = torch.from_numpy(lens).to(device)
    mask = (torch.arange(length, device=device)[None, :] < lens_t[:, None])[:, None, None, :]
    decodes.append(DecodeGroup(row, row + len(group), torch.from_numpy(gather).to(device), mask))
    return row + len(group)
