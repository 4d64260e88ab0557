"""Benchmarks: each scenario measures plain TCP and fastivc in the same run."""
