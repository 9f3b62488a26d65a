"""Conv-BN folding in torch: exact algebra, whole networks, refusal where it would be wrong."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from resserve.builder.logit_parity import compare_logits, relative_max_diff
from resserve.errors import ExportError
from resserve.models.fold import fold_batchnorms, fold_conv_bn
from resserve.models.weights import load_model
from resserve.synthetic import synthetic_batch

FOLD_RTOL = 1e-5  # float64 folding, float32 storage: a few ulps of the activations


def randomized_bn(channels: int, seed: int) -> nn.BatchNorm2d:
    gen = torch.Generator().manual_seed(seed)
    bn = nn.BatchNorm2d(channels, eps=1e-3)
    with torch.no_grad():
        bn.weight.uniform_(0.2, 2.0, generator=gen)
        bn.bias.normal_(0, 0.5, generator=gen)
        bn.running_mean.normal_(0, 1.0, generator=gen)
        bn.running_var.uniform_(0.1, 3.0, generator=gen)
    return bn.eval()


@pytest.mark.parametrize(("groups", "bias", "stride"), [(1, False, 1), (1, True, 2), (4, False, 1), (8, True, 2)])
def test_fold_conv_bn_matches_conv_then_bn(groups: int, bias: bool, stride: int) -> None:
    torch.manual_seed(groups)
    conv = nn.Conv2d(16, 32, 3, stride=stride, padding=1, groups=groups, bias=bias).eval()
    bn = randomized_bn(32, seed=groups)
    x = torch.randn(4, 16, 20, 20)
    with torch.no_grad():
        expected = bn(conv(x))
        folded = fold_conv_bn(conv, bn)(x)
    assert relative_max_diff(expected.numpy(), folded.numpy()) < FOLD_RTOL


def test_formula_on_one_channel() -> None:
    conv = nn.Conv2d(1, 1, 1, bias=True)
    bn = nn.BatchNorm2d(1, eps=0.0).eval()
    with torch.no_grad():
        conv.weight.fill_(2.0)
        conv.bias.fill_(1.0)
        bn.weight.fill_(3.0)
        bn.bias.fill_(0.5)
        bn.running_mean.fill_(4.0)
        bn.running_var.fill_(9.0)
    folded = fold_conv_bn(conv, bn)
    # W' = W * g / sqrt(v + e) = 2 * 3 / 3; b' = beta + (b - mu) * g / sqrt(v + e) = 0.5 + (1 - 4) * 1
    assert folded.weight.item() == pytest.approx(2.0)
    assert folded.bias.item() == pytest.approx(-2.5)


# ResNeXt's grouped convs are folded in the per-layer cases above; the whole network is a minute: slow.
@pytest.mark.parametrize("arch", ["resnet18", pytest.param("resnext50_32x4d", marks=pytest.mark.slow)])
def test_whole_network_folds_with_parity(arch: str) -> None:
    loaded = load_model(arch, random_weights=True, seed=1)
    folded, count = fold_batchnorms(loaded.model)
    assert count == sum(isinstance(m, nn.BatchNorm2d) for m in loaded.model.modules())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    x = torch.from_numpy(synthetic_batch(4, 224, seed=9))
    with torch.no_grad():
        compare_logits(arch, loaded.model(x).numpy(), folded(x).numpy(), rtol=1e-4)
    # The source model is left untouched.
    assert any(isinstance(m, nn.BatchNorm2d) for m in loaded.model.modules())


def test_training_mode_is_refused() -> None:
    with pytest.raises(ExportError, match="eval-mode"):
        fold_batchnorms(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).train())


def test_batchnorm_not_after_a_conv_is_reported() -> None:
    model = nn.Sequential(nn.ReLU(), nn.BatchNorm2d(3)).eval()
    with pytest.raises(ExportError, match="1 BatchNorm layers do not directly follow a Conv2d"):
        fold_batchnorms(model)
