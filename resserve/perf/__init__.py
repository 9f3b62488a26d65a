"""Measuring resserve: benchmarks (the bare engine as the reference, variant matrices, preprocessing
on one core, the server against its bound) and the load generator (closed and open loop, gRPC,
max-rate search, sweeps, reports). Experiments and committed reports live outside the package, in
``loadtests/``."""
