"""Measurements behind tools/benchmark.py: timing, FLOPs, memory, training steps, reference kernels."""
