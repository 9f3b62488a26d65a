"""Build a model repository: export, fold, quantize and compile each variant, measure its accuracy.

Uses engines, models and the leaf modules; nothing that serves imports it, so the runtime image
needs neither torch nor this package.
"""
