"""The scheduler/executor contract and the shared engine; no torch, no simulator, no model."""
from runtime.core.errors import AccelgenError, ConfigError, SchedulerStallError, WorkloadError
from runtime.core.interface import Clock, CostModel, Executor, RequestSource, Scheduler
from runtime.core.outputs import SchedulerOutput, StepResult
from runtime.core.request import Request, RequestStatus, RequestTimes, SLOClass

__all__ = [
    "AccelgenError", "Clock", "ConfigError", "CostModel", "Executor", "Request", "RequestSource", "RequestStatus",
    "RequestTimes", "SLOClass", "Scheduler", "SchedulerOutput", "SchedulerStallError", "StepResult", "WorkloadError",
]
