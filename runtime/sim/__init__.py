"""Simulation backend: workloads, iteration-latency cost models, KV capacity. Never imports torch."""
