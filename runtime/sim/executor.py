"""SimExecutor: a step takes the time the cost model predicts for its composition; no model runs, no torch."""
from __future__ import annotations

from runtime.core.interface import CostModel
from runtime.core.outputs import SchedulerOutput, StepResult


class SimExecutor:
    def __init__(self, *, cost_model: CostModel) -> None:
        self.cost_model = cost_model

    def execute(self, output: SchedulerOutput) -> StepResult:
        step_time = self.cost_model.predict(output.prefill_chunks, output.decode_context_lens)
        # The simulator samples no real tokens; update_from_output only counts them.
        return StepResult(sampled_token_ids={}, step_time=step_time)
