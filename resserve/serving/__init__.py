"""Models in memory: the model manager, batching, the adaptive batch policy and fault injection.

Knows nothing of HTTP (that is :mod:`resserve.server`) and nothing of building (:mod:`resserve.builder`).
"""
