"""Benchmarks: speed, gradient variance and model quality. Run with ``make bench``."""
