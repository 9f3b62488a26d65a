"""Benchmarks without HTTP load: the bare engine (the reference), variant matrices, preprocessing.

The server benchmark drives HTTP load, so it lives with the load generator in
:mod:`resserve.perf.server_bench`; bench imports nothing from loadtest.
"""
