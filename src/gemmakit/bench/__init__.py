"""Benchmarks (`gemmakit bench`): figures measured side by side in one run, JSON out."""
