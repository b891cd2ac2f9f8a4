"""A tiny single-threaded ONNX Runtime CPU device for tests that drive whole pipelines.

One thread and a protocol of 1 warmup plus at least 3 timed runs capped at 0.5 s keep dozens
of single-layer and network measurements within seconds; the numbers are not meant to be good.
"""

from __future__ import annotations

from pathlib import Path

DEVICE_NAME = "test-ort"
MIN_RUNS = 3


def write_tiny_ort_device(directory: Path, *, parity_check: bool) -> Path:
    """Write ``directory/dev.toml`` (ONNX files cached in ``directory/onnx``) and return it.

    ``parity_check`` is the adapter's option: compare ONNX Runtime with PyTorch on each export.
    """
    toml = directory / "dev.toml"
    toml.write_text(
        f"""
name = "{DEVICE_NAME}"
adapter = "cpu-ort"
[options]
threads = 1
inter_op_threads = 1
graph_optimization = "all"
parity_check = {str(parity_check).lower()}
cache_dir = "{directory / "onnx"}"
[protocol]
warmup_runs = 1
warmup_min_s = 0.0
min_runs = {MIN_RUNS}
min_s = 0.0
max_s = 0.5
batch_size = 1
"""
    )
    return toml
