"""Benchmarks: the bare engine (the reference), and later the server against it."""
