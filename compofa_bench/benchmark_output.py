"""Parsers for the text TFLite / LiteRT benchmark tools print.

Two tools are understood:

* TFLite's ``benchmark_model`` (``tensorflow/lite/tools/benchmark``), the binary people run on
  phones. Its result lines are::

      count=50 first=16859 curr=16331 min=15897 max=17291 avg=16347.9 std=262
      Timings (microseconds): count=50 first=... curr=... min=... max=... avg=... std=...
      Inference timings in us: Init: 31145, First inference: 50093, Warmup (avg): 19117.7, Inference (avg): 16347.9

  (all in microseconds; the first ``count=`` line of a run is the warmup phase, the last the
  timed phase), and with ``--enable_op_profiling=true`` the ``Run Order`` / ``Top by
  Computation Time`` / ``Summary by node type`` tables.
* ai-edge-litert's Python ``litert-benchmark`` (``BENCHMARK RESULTS`` block, milliseconds),
  which runs on x86 and is what the test suite uses as a stand-in for ``benchmark_model``.

Everything is converted to milliseconds. :func:`parse` picks the format and raises
:class:`~compofa_bench.errors.MeasurementError` when the text holds no result, so the caller
can keep the raw output next to the failure.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from compofa_bench.errors import MeasurementError

_NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_COUNT_LINE = re.compile(
    rf"(?:Timings \(microseconds\):\s*)?count=(?P<count>\d+)"
    rf"(?:\s+first=(?P<first>{_NUM}))?"
    rf"(?:\s+curr=(?P<curr>{_NUM}))?"
    rf"\s+min=(?P<min>{_NUM})\s+max=(?P<max>{_NUM})"
    rf"\s+avg=(?P<avg>{_NUM})\s+std=(?P<std>{_NUM})"
)
_INFERENCE_US = re.compile(r"Inference timings in us:\s*(?P<body>.*)")
_AVERAGE_US_OLD = re.compile(r"Average inference timings in us:\s*(?P<body>.*)")
_KV_COLON = re.compile(rf"(?P<key>[A-Za-z][A-Za-z ()]*?):\s*(?P<value>{_NUM})")
_ERROR_HINTS = (
    "Failed to",
    "failed to",
    "Error",
    "ERROR",
    "not found",
    "Permission denied",
    "No such file",
    "Aborted",
    "Segmentation fault",
)


@dataclass
class OpProfile:
    """One row of an op-profiling table (times in ms, as the tool prints them)."""

    node_type: str
    avg_ms: float
    percent: float
    name: str = ""
    first_ms: float | None = None
    count: int | None = None
    times_called: int | None = None


@dataclass
class BenchmarkResult:
    """What a benchmark tool reported, in milliseconds.

    ``summary_ms`` uses the keys :meth:`compofa_bench.measure.Stats.from_timing` reads
    (``count``, ``mean``, ``std``, ``min``, ``max``, ``first``, ``median`` when known).
    """

    tool: str
    summary_ms: dict[str, float]
    warmup_ms: dict[str, float] = field(default_factory=dict)
    init_ms: float | None = None
    first_inference_ms: float | None = None
    run_order: list[OpProfile] = field(default_factory=list)
    by_node_type: list[OpProfile] = field(default_factory=list)
    info: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "tool": self.tool,
            "summary_ms": dict(self.summary_ms),
            "warmup_ms": dict(self.warmup_ms),
            "init_ms": self.init_ms,
            "first_inference_ms": self.first_inference_ms,
            "run_order": [vars(op) for op in self.run_order],
            "by_node_type": [vars(op) for op in self.by_node_type],
            "info": dict(self.info),
        }


def parse(text: str) -> BenchmarkResult:
    """Parse the output of ``benchmark_model`` or ``litert-benchmark``."""
    if "BENCHMARK RESULTS" in text and "Inference (avg):" in text:
        return parse_litert_benchmark(text)
    return parse_benchmark_model(text)


def _count_stats(m: re.Match[str]) -> dict[str, float]:
    us = {k: float(v) for k, v in m.groupdict().items() if v is not None}
    out = {
        "count": us["count"],
        "mean": us["avg"] / 1e3,
        "std": us["std"] / 1e3,
        "min": us["min"] / 1e3,
        "max": us["max"] / 1e3,
    }
    if "first" in us:
        out["first"] = us["first"] / 1e3
    if "curr" in us:
        out["curr"] = us["curr"] / 1e3
    return out


def parse_benchmark_model(text: str) -> BenchmarkResult:
    """TFLite ``benchmark_model`` output (any version since 2019)."""
    matches = list(_COUNT_LINE.finditer(text))
    # ``Memory (bytes): count=0`` and friends have no min/max/avg and are skipped by the regex.
    # The tool's own lines are bare ``count=...``; ``Timings (microseconds): count=...`` is the
    # op profiler's sum over nodes, used only by very old builds that print nothing else.
    own = [m for m in matches if not m.group(0).startswith("Timings")]
    runs = [_count_stats(m) for m in (own or matches)]
    if not runs:
        raise MeasurementError(f"benchmark_model output has no timing line ({_hint(text)})")
    # The warmup phase is printed first, the timed phase last.
    summary = runs[-1]
    warmup = runs[0] if len(runs) > 1 else {}
    result = BenchmarkResult(tool="benchmark_model", summary_ms=summary, warmup_ms=warmup)
    m = _INFERENCE_US.search(text) or _AVERAGE_US_OLD.search(text)
    if m:
        fields = {
            k.strip().lower(): float(v) / 1e3
            for k, v in ((g.group("key"), g.group("value")) for g in _KV_COLON.finditer(m["body"]))
        }
        result.init_ms = fields.get("init")
        result.first_inference_ms = fields.get("first inference")
        if "warmup (avg)" in fields:
            result.warmup_ms.setdefault("mean", fields["warmup (avg)"])
        elif "warmup" in fields:
            result.warmup_ms.setdefault("mean", fields["warmup"])
    if result.first_inference_ms is None and warmup.get("first") is not None:
        result.first_inference_ms = warmup["first"]
    result.run_order = _parse_table(text, "Run Order")
    result.by_node_type = _parse_table(text, "Summary by node type")
    for key, pattern in (
        ("num_threads", r"Num threads: \[(\d+)\]"),
        ("graph", r"Graph: \[([^\]]*)\]"),
        ("model_size_mb", r"The input model file size \(MB\): (" + _NUM + ")"),
        ("xnnpack", r"Use xnnpack\s*:\s*\[(\d)\]"),
        ("gpu", r"Use gpu\s*:\s*\[(\d)\]"),
        ("memory_overall_mb", r"Memory footprint delta.*overall=(" + _NUM + ")"),
    ):
        found = re.search(pattern, text)
        if found:
            result.info[key] = found.group(1)
    return result


def _parse_table(text: str, title: str) -> list[OpProfile]:
    """An op-profiling table: a ``=== <title> ===`` banner, a header of ``[column]`` cells,
    then tab/space separated rows until a blank line or the next banner."""
    lines = text.splitlines()
    start = next(
        (i for i, line in enumerate(lines) if re.match(rf"\s*=+ {re.escape(title)} =+\s*$", line)),
        None,
    )
    if start is None or start + 1 >= len(lines):
        return []
    header = [h.strip().lower() for h in re.findall(r"\[([^\]]+)\]", lines[start + 1])]
    rows: list[OpProfile] = []
    for line in lines[start + 2 :]:
        if not line.strip() or line.lstrip().startswith("="):
            break
        name = ""
        named = re.search(r"\[(.*)\]\s*$", line)
        body = line
        if named and "name" in header:
            name = named.group(1)
            body = line[: named.start()]
        cells = body.split()
        values = dict(zip([h for h in header if h != "name"], cells, strict=False))
        try:
            rows.append(
                OpProfile(
                    node_type=values.get("node type", ""),
                    avg_ms=float(values["avg ms"]),
                    percent=float(values.get("%", values.get("avg %", "nan")).rstrip("%")),
                    name=name,
                    first_ms=float(values["first"]) if "first" in values else None,
                    count=int(values["count"]) if "count" in values else None,
                    times_called=(
                        int(values["times called"]) if "times called" in values else None
                    ),
                )
            )
        except (KeyError, ValueError):
            continue
    return rows


_LITERT_LINE = re.compile(rf"^(?P<key>[A-Za-z][A-Za-z ()0-9]*?):\s+(?P<value>{_NUM}) ms", re.M)
_LITERT_RUNS = re.compile(r"^Inference \(avg\):\s+\S+ ms \((?P<n>\d+) runs\)", re.M)


def parse_litert_benchmark(text: str) -> BenchmarkResult:
    """ai-edge-litert's ``litert-benchmark`` ``BENCHMARK RESULTS`` block (milliseconds)."""
    values = {m["key"].strip().lower(): float(m["value"]) for m in _LITERT_LINE.finditer(text)}
    runs = _LITERT_RUNS.search(text)
    if "inference (avg)" not in values or runs is None:
        raise MeasurementError(f"litert-benchmark output has no inference result ({_hint(text)})")
    summary = {"count": float(runs["n"]), "mean": values["inference (avg)"]}
    for src, dst in (
        ("inference (std)", "std"),
        ("inference (min)", "min"),
        ("inference (max)", "max"),
        ("inference (median)", "median"),
        ("inference (p95)", "p95"),
    ):
        if src in values:
            summary[dst] = values[src]
    warmup = {}
    if "warmup (avg)" in values:
        warmup["mean"] = values["warmup (avg)"]
    if "warmup (first)" in values:
        warmup["first"] = values["warmup (first)"]
    return BenchmarkResult(
        tool="litert-benchmark",
        summary_ms=summary,
        warmup_ms=warmup,
        init_ms=values.get("model initialization"),
        first_inference_ms=values.get("warmup (first)"),
    )


def _hint(text: str) -> str:
    """The most telling line of a failed run, for a one-line error."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return "no output at all"
    for line in lines:
        if any(h in line for h in _ERROR_HINTS):
            return f"tool said: {line[:200]}"
    return f"last line: {lines[-1][:200]}"
