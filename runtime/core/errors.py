"""Named errors: each says which input or field is wrong, so a run never ends in a traceback from deep inside."""


class AccelgenError(Exception):
    """Base of every error accelgen raises on purpose."""


class ConfigError(AccelgenError, ValueError):
    """An impossible or unknown configuration value (the message names the key)."""


class WorkloadError(AccelgenError, ValueError):
    """A malformed, empty or inconsistent trace or workload definition (the message names file, row and field)."""


class SchedulerStallError(AccelgenError, RuntimeError):
    """A scheduler returned an empty batch while requests wait and nothing runs: the run cannot progress."""


class CheckpointError(AccelgenError, ValueError):
    """A model checkpoint directory that cannot be loaded: missing or malformed files, wrong shapes or names."""


class DeviceMemoryError(AccelgenError, RuntimeError):
    """The model weights, KV cache or swap space do not fit the memory of the device (or host) they need."""
