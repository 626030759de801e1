"""Benchmarks: quality and speed, as ratios in one run (figures in results/)."""
