"""Benchmarks run as commands; each writes bench/results/<name>.json."""
