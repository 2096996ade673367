"""Benchmark suite (`make bench`). Every figure is a ratio or comparison within one run."""
