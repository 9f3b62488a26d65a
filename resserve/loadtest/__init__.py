"""Load testing: an async generator, measurement windows, variant sweeps and reports."""
