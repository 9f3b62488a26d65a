"""The statistics collector: what each call adds, and that its document is Triton's message."""

from __future__ import annotations

from google.protobuf import json_format
from tritonclient.grpc import service_pb2

from resserve.serving.statistics import ModelStatistics


def test_requests_count_successes_failures_and_images() -> None:
    stats = ModelStatistics("m", "1")
    stats.request_done(True, 0.01, 3)
    stats.request_done(False, 0.02, 2)
    document = stats.as_dict()
    assert document["inference_stats"]["success"] == {"count": 1, "ns": 10_000_000}
    assert document["inference_stats"]["fail"] == {"count": 1, "ns": 20_000_000}
    assert document["inference_count"] == 3  # failed images are not inferences
    assert document["last_inference"] > 0


def test_batches_count_per_item_and_per_batch_size() -> None:
    stats = ModelStatistics("m", "1")
    stats.preprocessed(0.002)
    stats.batch_done([1, 3], [0.001, 0.003], concat_s=0.0004, infer_s=0.01, output_s=0.0008)
    stats.batch_done([4], [0.002], concat_s=0.0, infer_s=0.01, output_s=0.0004)
    document = stats.as_dict()
    inference = document["inference_stats"]
    assert document["execution_count"] == 2
    assert inference["queue"] == {"count": 3, "ns": 6_000_000}
    assert inference["compute_infer"] == {"count": 3, "ns": 30_000_000}  # each item counts its batch's run
    assert inference["compute_input"]["count"] == 3
    assert inference["compute_input"]["ns"] == 2_000_000 + 100_000 + 300_000  # preprocessing + concat shares
    assert [b["batch_size"] for b in document["batch_stats"]] == [4]
    assert document["batch_stats"][0]["compute_infer"] == {"count": 2, "ns": 20_000_000}


def test_the_document_parses_as_tritons_message() -> None:
    stats = ModelStatistics("m", "1")
    stats.batch_done([2], [0.001], concat_s=0.0, infer_s=0.01, output_s=0.0001)
    stats.request_done(True, 0.02, 2)
    message = json_format.ParseDict({"model_stats": [stats.as_dict()]}, service_pb2.ModelStatisticsResponse())
    assert message.model_stats[0].batch_stats[0].batch_size == 2
    assert message.model_stats[0].inference_stats.success.count == 1
