"""The parity measure, the metadata round trip and the preprocessing contract's validation."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper
from pydantic import ValidationError

from resserve.builder.logit_parity import compare_logits, relative_max_diff, top5_agree
from resserve.contract import PreprocessContract, imagenet_contract
from resserve.errors import ParityError
from resserve.metadata import ModelMetadata, write_metadata


def test_relative_max_diff() -> None:
    ref = np.array([[10.0, -20.0, 5.0]])
    assert relative_max_diff(ref, ref + np.array([[0.0, 0.002, 0.0]])) == pytest.approx(1e-4)


def test_compare_logits_accepts_close_and_rejects_far() -> None:
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((4, 100)).astype(np.float32) * 5
    result = compare_logits("close", ref, ref + 1e-6)
    assert result.relative_max_diff < 1e-4 and result.top5_equal
    with pytest.raises(ParityError, match="exceeds"):
        compare_logits("far", ref, ref * 1.01)
    with pytest.raises(ParityError, match="shapes differ"):
        compare_logits("shape", ref, ref[:2])


def test_top5_swap_counts_only_beyond_the_tolerance() -> None:
    ref = np.array([[5.0, 4.99999, 3.0, 2.0, 1.0, 0.0]])
    swapped = np.array([[4.99999, 5.0, 3.0, 2.0, 1.0, 0.0]])
    assert top5_agree(ref, swapped, atol=1e-4)  # a tie: either order is right
    reordered = np.array([[3.0, 4.99999, 5.0, 2.0, 1.0, 0.0]])
    assert not top5_agree(ref, reordered, atol=1e-4)


def test_metadata_round_trip_keeps_foreign_props() -> None:
    model = helper.make_model(helper.make_graph([], "g", [], []))
    model.metadata_props.add(key="producer.note", value="kept")
    meta = ModelMetadata(arch="resnet50", num_classes=3, weights_kind="random", random_weights=True,
                         preprocess=imagenet_contract(232), labels=["a", "b", "c"], folded=True,
                         parity={"x": 1e-6})
    write_metadata(model, meta)
    write_metadata(model, meta)  # idempotent: no duplicated keys
    props = {p.key: p.value for p in model.metadata_props}
    assert props["producer.note"] == "kept"
    assert props["resserve.folded"] == "true" and props["resserve.arch"] == "resnet50"
    assert len(model.metadata_props) == len(props)
    back = ModelMetadata.from_props(props)
    assert back == meta
    onnx.checker.check_model(model)  # still a valid model


def test_contract_rejects_bad_values() -> None:
    with pytest.raises(ValidationError, match="positive"):
        PreprocessContract(crop_size=0)
    with pytest.raises(ValidationError, match="shorter_side"):
        PreprocessContract(resize_size=(320, 240))
    with pytest.raises(ValidationError, match="Extra inputs"):
        PreprocessContract(colour="RGB")  # type: ignore[call-arg]
    exact = PreprocessContract(resize_mode="exact", resize_size=(320, 240), crop_size=(300, 200), layout="NHWC")
    assert exact.crop_wh == (300, 200)
