"""The seeded state-dict recipe shared with tests/fixtures/make_*_reference.py.

The reference scripts fill torchvision's and timm's own models with these tensors and record
their logits; the tests fill resserve's models the same way and compare.
"""

from __future__ import annotations

import torch


def seeded_state_dict(shapes: dict[str, list[int]], seed: int) -> dict[str, torch.Tensor]:
    """Tensors with these keys and shapes, in this key order, from one seeded generator."""
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for key, shape in shapes.items():
        if key.endswith("num_batches_tracked"):
            out[key] = torch.tensor(0, dtype=torch.long)
        elif key.endswith("running_var"):
            out[key] = torch.rand(shape, generator=gen) + 0.5
        else:
            out[key] = torch.randn(shape, generator=gen) * 0.05
    return out


def reference_input() -> torch.Tensor:
    """The input both reference scripts record logits for."""
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
