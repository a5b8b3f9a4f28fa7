"""SimExecutor: a step takes the time the cost model predicts for its composition; no model runs, no torch.

A step that swaps KV blocks first waits for the transfers (``kv_transfer``: swap-out and swap-in each cost
``T_swap(blocks)``), so a swap stalls every member of the step, as a blocking copy does on one GPU stream. The
marginal time of the step's recompute chunks, ``T̂(B) − T̂(B without them)``, is reported as ``recompute_time``
(noise-free; it is already inside ``step_time``).

Settling (``runtime.sim.settle``): a decode-only step ``k`` decode-only steps after the last step with prefill
tokens takes ``settle_factor(k)`` times its ``T̂(B)`` where the cost model has one (``LinearCostModel`` with
``settle_amplitude > 0``); the executor keeps ``k``, the only history a step's time depends on.
"""
from __future__ import annotations

from runtime.core.interface import CostModel, KVTransferModel
from runtime.core.outputs import SchedulerOutput, StepResult


class SimExecutor:
    def __init__(self, *, cost_model: CostModel, kv_transfer: KVTransferModel | None = None) -> None:
        self.cost_model = cost_model
        self.kv_transfer = kv_transfer
        self._planner = getattr(cost_model, "predict_deterministic", cost_model.predict)
        self._settle = getattr(cost_model, "settle_factor", None)
        self._since_prefill = -1  # k of the next decode-only step; -1 until a step has run prefill tokens

    def execute(self, output: SchedulerOutput) -> StepResult:
        step_time = self.cost_model.predict(output.prefill_chunks, output.decode_context_lens)
        if output.prefill_chunks:
            self._since_prefill = 0
        elif output.decode_context_lens and self._since_prefill >= 0:
            if self._settle is not None:
                step_time *= self._settle(self._since_prefill)
            self._since_prefill += 1
        swap_time = recompute_time = 0.0
        if output.blocks_to_swap_out or output.blocks_to_swap_in:
            if self.kv_transfer is None:
                raise ValueError("a step swaps KV blocks but the executor has no kv_transfer model")
            swap_time = (self.kv_transfer.swap_time_s(len(output.blocks_to_swap_out))
                         + self.kv_transfer.swap_time_s(len(output.blocks_to_swap_in)))
        if output.recompute_req_ids:
            recompute = set(output.recompute_req_ids)
            kept = [c for r, c in zip(output.prefill_req_ids, output.prefill_chunks) if r not in recompute]
            recompute_time = (self._planner(output.prefill_chunks, output.decode_context_lens)
                              - self._planner(kept, output.decode_context_lens))
        # The simulator samples no real tokens; update_from_output only counts them.
        return StepResult(sampled_token_ids={}, step_time=step_time + swap_time, swap_time=swap_time,
                          recompute_time=recompute_time)
