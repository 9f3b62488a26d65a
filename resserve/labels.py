"""Label sets: the 1,000 ImageNet classes shipped with the package, or a user's file."""

from __future__ import annotations

from functools import cache
from importlib import resources
from pathlib import Path


@cache
def imagenet_labels() -> tuple[str, ...]:
    """The ImageNet-1k class names in torchvision's order."""
    text = resources.files("resserve").joinpath("data/imagenet_labels.txt").read_text(encoding="utf-8")
    labels = tuple(line for line in text.splitlines() if line)
    assert len(labels) == 1000, "packaged ImageNet label file is damaged"
    return labels


def load_labels(path: Path) -> tuple[str, ...]:
    """One label per line; blank lines at the end are ignored."""
    lines = path.read_text(encoding="utf-8").splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    return tuple(lines)


def default_labels(num_classes: int) -> tuple[str, ...]:
    """ImageNet names for 1,000 classes, ``class_<i>`` otherwise."""
    if num_classes == 1000:
        return imagenet_labels()
    return tuple(f"class_{i}" for i in range(num_classes))
