"""The ResNet family (torchvision-compatible) and where its weights come from."""

from resserve.models.resnet import ARCHS, ResNet, build_resnet

__all__ = ["ARCHS", "ResNet", "build_resnet"]
