"""Where model weights come from: a local file, a torchvision or timm weights name, or a seeded random init.

Every path ends in a model in eval mode plus a :class:`WeightsSource` saying what was loaded,
which the exporter records in the ONNX metadata so a served model always says whether its
predictions mean anything.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from resserve.contract import PreprocessContract, imagenet_contract
from resserve.errors import WeightsError
from resserve.files import sha256_file
from resserve.models.download import check_sha256, download_verified
from resserve.models.random_init import randomize
from resserve.models.registry import ARCH_NAMES, build_model
from resserve.models.timm_weights import PREFIX as TIMM_PREFIX
from resserve.models.timm_weights import cached_timm_weights, fetch_timm_weights, parse_timm_name

log = logging.getLogger(__name__)

DEFAULT_WEIGHTS_BASE_URL = "https://download.pytorch.org/models"


@dataclass(frozen=True)
class TorchvisionWeights:
    """One official torchvision weights file and the preprocessing it was trained with."""

    arch: str
    name: str
    file_name: str
    resize_size: int
    crop_size: int = 224

    @property
    def url(self) -> str:
        """Official location, or ``$RESSERVE_WEIGHTS_BASE_URL`` (an internal mirror) when set."""
        base = os.environ.get("RESSERVE_WEIGHTS_BASE_URL", DEFAULT_WEIGHTS_BASE_URL)
        return f"{base.rstrip('/')}/{self.file_name}"

    @property
    def sha256_prefix(self) -> str:
        # torch.hub convention: the file name ends in the first hex digits of its sha256.
        return self.file_name.rsplit("-", 1)[1].split(".")[0]

    @property
    def contract(self) -> PreprocessContract:
        return imagenet_contract(resize_size=self.resize_size, crop_size=self.crop_size)


def _tv(arch: str, v1: str, v2: str | None = None, v1_resize: int = 256) -> dict[str, TorchvisionWeights]:
    table = {"IMAGENET1K_V1": TorchvisionWeights(arch, "IMAGENET1K_V1", f"{arch}-{v1}.pth", v1_resize)}
    if v2:
        table["IMAGENET1K_V2"] = TorchvisionWeights(arch, "IMAGENET1K_V2", f"{arch}-{v2}.pth", 232)
    return table


# From torchvision.models.resnet (file names carry the sha256 prefix; V2 recipes resize to 232).
TORCHVISION_WEIGHTS: dict[str, dict[str, TorchvisionWeights]] = {
    "resnet18": _tv("resnet18", "f37072fd"),
    "resnet34": _tv("resnet34", "b627a593"),
    "resnet50": _tv("resnet50", "0676ba61", "11ad3fa6"),
    "resnet101": _tv("resnet101", "63fe2227", "cd907fc2"),
    "resnet152": _tv("resnet152", "394f9c45", "f82ba261"),
    "resnext50_32x4d": _tv("resnext50_32x4d", "7cdf4587", "1a0047aa"),
    "resnext101_32x8d": _tv("resnext101_32x8d", "8ba56ff5", "110c445d"),
    "resnext101_64x4d": _tv("resnext101_64x4d", "173b62eb", v1_resize=232),
    "wide_resnet50_2": _tv("wide_resnet50_2", "95faca4d", "9ba9bcbe"),
    "wide_resnet101_2": _tv("wide_resnet101_2", "32ee1156", "d733dc28"),
}
# torchvision's enum class names, e.g. ResNeXt50_32X4D_Weights, mapped to architectures.
_ENUM_NAMES = {
    "ResNet18_Weights": "resnet18",
    "ResNet34_Weights": "resnet34",
    "ResNet50_Weights": "resnet50",
    "ResNet101_Weights": "resnet101",
    "ResNet152_Weights": "resnet152",
    "ResNeXt50_32X4D_Weights": "resnext50_32x4d",
    "ResNeXt101_32X8D_Weights": "resnext101_32x8d",
    "ResNeXt101_64X4D_Weights": "resnext101_64x4d",
    "Wide_ResNet50_2_Weights": "wide_resnet50_2",
    "Wide_ResNet101_2_Weights": "wide_resnet101_2",
}


@dataclass(frozen=True)
class WeightsSource:
    """What the model's weights are, for metadata, logs and responses."""

    kind: Literal["file", "torchvision", "timm", "random"]
    description: str
    sha256: str | None = None
    seed: int | None = None

    @property
    def is_random(self) -> bool:
        return self.kind == "random"


@dataclass
class LoadedModel:
    """A model ready for export, with its provenance and preprocessing contract."""

    arch: str
    model: nn.Module  # a torchvision- or timm-layout ResNet: both end in ``fc``
    source: WeightsSource
    contract: PreprocessContract

    @property
    def num_classes(self) -> int:
        return self.model.fc.out_features  # type: ignore[union-attr,return-value]


def cache_dir() -> Path:
    """``$RESSERVE_CACHE_DIR`` or ``~/.cache/resserve``: where downloaded weights are kept."""
    return Path(os.environ.get("RESSERVE_CACHE_DIR", Path.home() / ".cache" / "resserve"))


def parse_torchvision_name(spec: str) -> TorchvisionWeights:
    """``torchvision:ResNet50_Weights.IMAGENET1K_V2`` (or ``DEFAULT``) to its file entry."""
    name = spec.removeprefix("torchvision:")
    enum_name, _, member = name.partition(".")
    arch = _ENUM_NAMES.get(enum_name)
    if arch is None:
        raise WeightsError(f"unknown torchvision weights enum {enum_name!r}; known: {', '.join(_ENUM_NAMES)}")
    table = TORCHVISION_WEIGHTS[arch]
    if member == "DEFAULT":
        member = max(table)  # the newest recipe, as torchvision's DEFAULT
    if member not in table:
        raise WeightsError(f"{enum_name} has no member {member!r}; known: {', '.join(table)}, DEFAULT")
    return table[member]


def cached_torchvision_weights(weights: TorchvisionWeights, directory: Path | None = None) -> Path | None:
    """The already downloaded file for ``weights``: in resserve's cache (or ``directory``), else in
    torch hub's (``<hub dir>/checkpoints``); None when neither has it. Not verified here."""
    directory = directory or cache_dir() / "weights"
    for candidate in (directory / weights.file_name, Path(torch.hub.get_dir()) / "checkpoints" / weights.file_name):
        if candidate.is_file():
            return candidate
    return None


def fetch_torchvision_weights(weights: TorchvisionWeights, directory: Path | None = None) -> Path:
    """The verified local file for ``weights``, downloading it into the cache when absent.

    A file already in torch hub's cache is reused. Offline, the error names the file and where
    to put it.
    """
    directory = directory or cache_dir() / "weights"
    target = directory / weights.file_name
    found = cached_torchvision_weights(weights, directory)
    if found is not None:
        _verify_prefix(found, weights)
        return found
    hint = (f"Place the file {weights.file_name} (sha256 starting {weights.sha256_prefix}) at {target}, "
            f"or pass --weights /path/to/{weights.file_name}")
    return download_verified(weights.url, target, lambda digest: check_sha256(digest, weights.sha256_prefix, target, prefix=True),
                             offline_hint=hint)


def _verify_prefix(path: Path, weights: TorchvisionWeights) -> None:
    check_sha256(sha256_file(path), weights.sha256_prefix, path, prefix=True)


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from ``.pth``/``.pt`` (never unpickling code) or ``.safetensors``."""
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors come in many types
        raise WeightsError(
            f"cannot read {path} as a tensor-only checkpoint ({exc}); resserve never unpickles "
            "arbitrary objects: save with torch.save(model.state_dict(), ...) or use .safetensors"
        ) from exc
    for wrapper in ("state_dict", "model"):  # common training-script wrappers
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{path} does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def load_state_dict_strict(model: nn.Module, state: dict[str, torch.Tensor], origin: str) -> None:
    """``load_state_dict(strict=True)`` with an error that says what does not fit."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in expected
        if k in state and state[k].shape != expected[k].shape
    ]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} keys (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} keys (e.g. {', '.join(unexpected[:3])})")
        if wrong:
            parts.append(f"shape mismatch: {'; '.join(wrong[:3])}")
        raise WeightsError(f"{origin} does not fit the architecture: {'; '.join(parts)}")
    model.load_state_dict(state, strict=True)


def load_model(
    arch: str,
    weights: str | Path | None = None,
    *,
    random_weights: bool = False,
    seed: int = 0,
    num_classes: int | None = None,
) -> LoadedModel:
    """Build ``arch`` and fill it from exactly one weights source.

    ``weights`` is a path to ``.pth``/``.safetensors``, ``torchvision:<Enum>.<MEMBER>`` or
    ``timm:<model>.<tag>``; ``random_weights`` asks for the seeded init instead. ``num_classes``
    defaults to the checkpoint's head size (fine-tuned heads), or 1,000.
    """
    if arch not in ARCH_NAMES:
        raise WeightsError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCH_NAMES)}")
    if (weights is None) == (not random_weights):
        raise WeightsError("give exactly one of --weights PATH|torchvision:NAME|timm:NAME or --random-weights")
    torch.manual_seed(seed)
    if random_weights:
        model = build_model(arch, num_classes or 1000)
        randomize(model, seed)
        log.warning(
            "%s uses seeded RANDOM weights (seed %d): predictions are meaningless; "
            "for real ones pass --weights torchvision:..., timm:... or a .pth/.safetensors file",
            arch,
            seed,
        )
        source = WeightsSource("random", f"random init, seed {seed}, BatchNorm re-estimated", seed=seed)
        return LoadedModel(arch, model, source, imagenet_contract())

    contract = imagenet_contract()
    kind: Literal["file", "torchvision", "timm"] = "file"
    if isinstance(weights, str) and weights.startswith("torchvision:"):
        entry = parse_torchvision_name(weights)
        if entry.arch != arch:
            raise WeightsError(f"{weights} are weights for {entry.arch}, not {arch}")
        path = fetch_torchvision_weights(entry)
        contract, kind = entry.contract, "torchvision"
        description = f"torchvision:{_enum_of(arch)}.{entry.name}"
    elif isinstance(weights, str) and weights.startswith(TIMM_PREFIX):
        timm_entry = parse_timm_name(weights)
        if timm_entry.arch != arch:
            raise WeightsError(f"{weights} are weights for {timm_entry.arch}, not {arch}")
        path = fetch_timm_weights(timm_entry, cache_dir() / "timm")
        contract, kind = timm_entry.contract, "timm"
        description = f"{TIMM_PREFIX}{timm_entry.name}"
    else:
        path = Path(weights)  # type: ignore[arg-type]
        description = str(path)
    state = read_state_dict(path)
    head = state.get("fc.weight")
    model = build_model(arch, num_classes or (head.shape[0] if head is not None else 1000), timm=kind == "timm")
    load_state_dict_strict(model, state, f"{path} (loaded as {arch})")
    model.eval()
    return LoadedModel(arch, model, WeightsSource(kind, description, sha256=sha256_file(path)), contract)


def cached_named_weights(weights: str) -> Path | None:
    """The already downloaded file for a ``torchvision:`` or ``timm:`` name, or None (not verified)."""
    try:
        if weights.startswith("torchvision:"):
            return cached_torchvision_weights(parse_torchvision_name(weights))
        if weights.startswith(TIMM_PREFIX):
            found = cached_timm_weights(parse_timm_name(weights), cache_dir() / "timm")
            return None if found is None else found[0]
    except WeightsError:
        return None
    return None


def named_weights_contract(weights: str) -> PreprocessContract | None:
    """The preprocessing a ``torchvision:`` or ``timm:`` weights name was trained with, offline."""
    try:
        if weights.startswith("torchvision:"):
            return parse_torchvision_name(weights).contract
        if weights.startswith(TIMM_PREFIX):
            return parse_timm_name(weights).contract
    except WeightsError:
        return None
    return None


def load_model_or_fallback(
    arch: str,
    weights: str | Path | None = None,
    *,
    random_weights: bool = False,
    seed: int = 0,
    num_classes: int | None = None,
    fallback_random: bool = False,
    what: str | None = None,
) -> tuple[LoadedModel, bool]:
    """:func:`load_model`, or with ``fallback_random`` when ``weights`` cannot be obtained (offline,
    missing, damaged, not fitting) the seeded random init instead, announced as a warning.

    Returns the model and whether it fell back. ``what`` names the model in the warning.
    """
    try:
        return load_model(arch, weights, random_weights=random_weights, seed=seed, num_classes=num_classes), False
    except WeightsError as exc:
        if not (fallback_random and weights):
            raise
        log.warning("%scannot use weights %s (%s); using seeded RANDOM weights instead",
                    f"{what}: " if what else "", weights, exc)
        loaded = load_model(arch, random_weights=True, seed=seed, num_classes=num_classes)
        # Serve with the preprocessing of the weights asked for, so a later rebuild with the real
        # ones changes the numbers the model holds, not what clients must send.
        loaded.contract = named_weights_contract(str(weights)) or loaded.contract
        return loaded, True


def _enum_of(arch: str) -> str:
    return next(k for k, v in _ENUM_NAMES.items() if v == arch)
