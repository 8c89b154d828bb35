"""Benchmarks run by `eco bench NAME`: each prints ratios against a baseline measured in the same run."""
