"""Seeded random weights that behave like trained ones where it matters for resserve's checks.

Offline (model hubs unreachable) a build falls back to these, announced everywhere; the tests and
benchmarks use them too. They must give input-dependent, stable logits, or no folding, precision
or agreement check could be judged on them.
"""

from __future__ import annotations

import torch
from torch import nn

from resserve.synthetic import synthetic_batch

# Residual branches end in a BatchNorm whose scale is shrunk by this factor (torchvision's
# zero_init_residual, softened): random deep ResNets are otherwise chaotic, 0.1% input noise
# flipping a quarter of the top-1 classes, so no precision could be judged on them.
RESIDUAL_SCALE = 0.03
# The head reads the leading principal components of the pooled features, where pictures
# differ; the low-variance directions mostly carry numerical noise. Measured on ResNet-18,
# OpenVINO int8 vs fp32 top-1 agreement on 200 held-out pictures: 16 components 93%, 8 94.5%,
# 4 97.5% (and 98.5% with the head kept fp32); 4 still gives dozens of distinct top-1 classes.
HEAD_COMPONENTS = 4
HEAD_IMAGES = 96


def randomize(model: nn.Module, seed: int, batches: int = 2, batch_size: int = 16, image_size: int = 224) -> None:
    """Seeded random weights that give input-dependent, stable, image-sensitive logits.

    BatchNorm affine parameters are drawn away from (1, 0) so folding is really exercised, the
    last BatchNorm of each residual branch is scaled down (see RESIDUAL_SCALE), then running
    statistics are re-estimated on image-like pictures: with the init values (mean 0, var 1)
    activations explode or vanish through the depth and every input maps to one class. Finally
    the head is fitted to the features' principal components (see _fit_head).
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.empty_like(m.weight).uniform_(0.5, 1.5, generator=gen))
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)
                m.reset_running_stats()
                m.momentum = None  # cumulative average over the calibration batches
        for m in model.modules():
            last = _last_residual_batchnorm(m)
            if last is not None:
                last.weight.mul_(RESIDUAL_SCALE)
        model.train()
        for i in range(batches):
            model(torch.from_numpy(synthetic_batch(batch_size, image_size, seed=seed * 1000 + i)))
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.momentum = 0.1
        model.eval()
        _fit_head(model, gen, seed, image_size)


def _last_residual_batchnorm(module: nn.Module) -> nn.BatchNorm2d | None:
    """The BatchNorm ending a residual branch (``bn3`` of a bottleneck, ``bn2`` of a basic block,
    in both families' blocks, which are the modules holding a ``downsample``), else None."""
    if not hasattr(module, "downsample"):
        return None
    last = getattr(module, "bn3", None) or getattr(module, "bn2", None)
    return last if isinstance(last, nn.BatchNorm2d) else None


def _fit_head(model: nn.Module, gen: torch.Generator, seed: int, image_size: int) -> None:
    """A random head over the standardized leading principal components of the pooled features.

    Pooled ReLU features share a large positive mean; through a random head that common part
    picks the same class for every input. Centering removes it; projecting on the components
    along which pictures differ (and scaling each to unit spread) keeps logits tied to the
    picture rather than to noise, as a trained head's are.
    """
    features: list[torch.Tensor] = []
    fc: nn.Linear = model.fc  # type: ignore[assignment]
    hook = fc.register_forward_pre_hook(lambda _m, args: features.append(args[0]))
    try:
        for start in range(0, HEAD_IMAGES, 32):
            model(torch.from_numpy(synthetic_batch(32, image_size, seed=seed * 1000 + 999 + start)))
    finally:
        hook.remove()
    feats = torch.cat(features).double()
    mean = feats.mean(0)
    _u, singular, vt = torch.linalg.svd(feats - mean, full_matrices=False)
    k = min(HEAD_COMPONENTS, feats.shape[0] - 1)
    spread = singular[:k] / (feats.shape[0] - 1) ** 0.5
    classes = torch.randn(fc.out_features, k, generator=gen, dtype=torch.float64) * (3.0 / k**0.5)
    weight = (classes / spread) @ vt[:k]
    fc.weight.copy_(weight.float())
    fc.bias.copy_((-(weight @ mean)).float())
