"""Latency lookup tables: keys, file format, prediction, OFA yaml import/export, build and
validation. See docs/lut.md."""

from compofa_bench.lut.keys import BaseLayout, layout, ofa_mbv3_key
from compofa_bench.lut.ofa_yaml import export_ofa_dir, import_ofa_dir
from compofa_bench.lut.table import Calibration, LatencyTable, LutEntry

__all__ = [
    "BaseLayout",
    "Calibration",
    "LatencyTable",
    "LutEntry",
    "export_ofa_dir",
    "import_ofa_dir",
    "layout",
    "ofa_mbv3_key",
]
