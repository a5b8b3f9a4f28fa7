"""The live runtime: a Llama decoder in plain PyTorch with a paged KV cache, driven by the same schedulers.

``model`` (the network), ``batch`` (one step's inputs), ``kv_cache`` (the tensors behind the BlockManager's
block ids), ``tokens`` (synthetic prompts and sampled outputs), ``weights`` (random init or a local HF
checkpoint), ``device`` (device, dtype and the memory plan) and ``executor`` (LiveExecutor). Imports torch;
nothing under runtime/core, runtime/sim, heuristics or solvers imports this package.
"""
