"""The benchmark_model / litert-benchmark output parser, on real-format output samples."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from compofa_bench import benchmark_output as bo
from compofa_bench.errors import MeasurementError
from compofa_bench.measure import Stats

DATA = Path(__file__).parent / "data"


def read(name: str) -> str:
    return (DATA / name).read_text()


def test_modern_android_output_is_converted_to_ms() -> None:
    r = bo.parse(read("benchmark_model_android.txt"))
    assert r.tool == "benchmark_model"
    # The timed phase is the second count= line, not the warmup line.
    assert r.summary_ms["count"] == 76
    assert r.summary_ms["mean"] == pytest.approx(13.1184)
    assert r.summary_ms["std"] == pytest.approx(0.214)
    assert r.summary_ms["min"] == pytest.approx(12.877)
    assert r.summary_ms["max"] == pytest.approx(14.152)
    assert r.warmup_ms["count"] == 37
    assert r.warmup_ms["first"] == pytest.approx(21.458)
    assert r.init_ms == pytest.approx(48.204)
    assert r.first_inference_ms == pytest.approx(21.458)
    assert r.info["num_threads"] == "4"
    assert r.info["xnnpack"] == "1"
    # The summary line and the timed count= line must agree.
    assert r.summary_ms["mean"] * 1e3 == pytest.approx(13118.4)


def test_summary_feeds_stats_from_timing() -> None:
    from compofa_bench.adapters.base import Timing

    r = bo.parse(read("benchmark_model_android.txt"))
    stats = Stats.from_timing(Timing(samples_ms=[], summary_ms=r.summary_ms))
    assert stats.source == "summary"
    assert stats.count == 76
    assert stats.mean_ms == pytest.approx(13.1184)
    assert stats.cv == pytest.approx(0.214 / 13.1184)
    assert not stats.unstable


def test_old_output_without_inference_timings_line() -> None:
    r = bo.parse(read("benchmark_model_old.txt"))
    assert r.summary_ms["count"] == 50
    assert r.summary_ms["mean"] == pytest.approx(110.615)
    assert r.init_ms == pytest.approx(3.712)
    assert r.warmup_ms["count"] == 5
    assert r.first_inference_ms == pytest.approx(114.338)


def test_op_profiling_tables() -> None:
    r = bo.parse(read("benchmark_model_op_profiling.txt"))
    # The benchmark's own count= line wins over the profiler's "Timings (microseconds)" sum.
    assert r.summary_ms["mean"] == pytest.approx(94.8766)
    assert r.summary_ms["count"] == 50
    assert [op.node_type for op in r.run_order] == [
        "CONV_2D",
        "DEPTHWISE_CONV_2D",
        "CONV_2D",
        "DEPTHWISE_CONV_2D",
        "CONV_2D",
    ]
    assert r.run_order[0].name == "MobilenetV1/MobilenetV1/Conv2d_0/Relu6"
    assert r.run_order[2].avg_ms == pytest.approx(6.107)
    assert r.run_order[2].percent == pytest.approx(6.435)
    by_type = {op.node_type: op for op in r.by_node_type}
    assert set(by_type) == {"CONV_2D", "DEPTHWISE_CONV_2D", "SOFTMAX", "RESHAPE", "AVERAGE_POOL_2D"}
    assert by_type["CONV_2D"].count == 15
    assert by_type["CONV_2D"].avg_ms == pytest.approx(84.702)
    assert sum(op.percent for op in r.by_node_type) == pytest.approx(100.0)
    d = r.to_dict()
    assert d["by_node_type"][0]["node_type"] == "CONV_2D"


def test_profiler_sum_alone_is_used_by_very_old_builds() -> None:
    text = "Timings (microseconds): count=10 first=900 curr=1000 min=800 max=1200 avg=1000 std=50\n"
    r = bo.parse(text)
    assert r.summary_ms["mean"] == pytest.approx(1.0)
    assert r.warmup_ms == {}


def test_failure_output_gives_the_tools_error_line() -> None:
    with pytest.raises(MeasurementError, match="Could not open"):
        bo.parse(read("benchmark_model_failure.txt"))


@pytest.mark.parametrize(
    "text,needle",
    [("", "no output at all"), ("garbage\nmore garbage\n", "last line: more garbage")],
)
def test_unparsable_output(text: str, needle: str) -> None:
    with pytest.raises(MeasurementError, match=needle):
        bo.parse(text)


LITERT_SAMPLE = """\
INFO:benchmark_litert_model:Model:           /tmp/m.tflite

========================================
 BENCHMARK RESULTS
========================================
Model initialization:  12.31 ms
Warmup (first):        3.40 ms
Warmup (avg):          2.10 ms (5 runs)
Inference (avg):       2.05 ms (20 runs)
Inference (min):       1.90 ms
Inference (max):       2.60 ms
Inference (median):    2.01 ms
Inference (std):       0.11 ms
Inference (p5):        1.92 ms
Inference (p95):       2.40 ms
Throughput:            95.20 MB/s
Fully accelerated:     True
========================================
"""


def test_litert_benchmark_block() -> None:
    r = bo.parse(LITERT_SAMPLE)
    assert r.tool == "litert-benchmark"
    assert r.summary_ms == {
        "count": 20,
        "mean": 2.05,
        "std": 0.11,
        "min": 1.90,
        "max": 2.60,
        "median": 2.01,
        "p95": 2.40,
    }
    assert r.init_ms == pytest.approx(12.31)
    assert r.first_inference_ms == pytest.approx(3.40)
    stats = Stats.from_summary(
        count=int(r.summary_ms["count"]),
        mean_ms=r.summary_ms["mean"],
        median_ms=r.summary_ms["median"],
    )
    assert stats.median_ms == pytest.approx(2.01)
    assert math.isnan(stats.iqr_ms)


def test_litert_block_without_runs_is_an_error() -> None:
    with pytest.raises(MeasurementError):
        bo.parse("BENCHMARK RESULTS\nInference (avg): 1.0 ms\n")
