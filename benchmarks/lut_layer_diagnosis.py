"""Per-layer diagnosis: one CompOFA network (r192, every stage d4/e6) profiled with ORT, each
layer's in-network kernel time (node-name attribution as in lut_method_compare.py) next to the
same layer run in isolation (its kernel time, and its whole run). Side by side in one run.

Usage: .venv/bin/python benchmarks/lut_layer_diagnosis.py > benchmarks/lut_layer_diagnosis.txt
"""

import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lut_method_compare import layer_of

from compofa_bench import supernet
from compofa_bench.adapters import open_adapter
from compofa_bench.convert import to_onnx
from compofa_bench.devices import load_device
from compofa_bench.lut.keys import layout
from compofa_bench.profile import SubnetFactory
from compofa_bench.spaces import COMPOFA_KERNELS, Arch

ad = open_adapter(load_device("cpu-ort-1t"))
lay = layout("mbv3")
ks = tuple(k for k in COMPOFA_KERNELS for _ in range(4))
arch = Arch(ks, (6,) * 20, (4,) * 5, 192)
tmp = Path(tempfile.mkdtemp())


def prof(module, shape, name):
    p = to_onnx(module, shape, tmp / f"{name}.onnx")
    so = ad._session_options()
    so.enable_profiling = True
    so.profile_file_prefix = str(tmp / name)
    s = ort.InferenceSession(str(p), so, providers=["CPUExecutionProvider"])
    b = ad.bind(s, shape)
    for _ in range(60):
        s.run_with_iobinding(b)
    ev = json.loads(Path(s.end_profiling()).read_text())
    runs = sorted((e for e in ev if e.get("name") == "model_run"), key=lambda e: e["ts"])[20:]
    starts = np.array([r["ts"] for r in runs])
    return ev, runs, starts


keys = lay.keys(arch, 1.0, 1000)
ev, runs, starts = prof(SubnetFactory()(arch), (1, 3, 192, 192), "net")
per = np.zeros((len(runs), len(keys)))
for e in ev:
    if e.get("cat") != "Node" or not e["name"].endswith("_kernel_time"):
        continue
    i = int(np.searchsorted(starts, e["ts"], side="right")) - 1
    if i < 0:
        continue
    j = layer_of(e["name"][:-12], len(keys))
    if j is not None:
        per[i, j] += e["dur"] / 1e3
innet = np.median(per, axis=0)
rows = []
for j, (k, spec) in enumerate(keys):
    ev2, runs2, _ = prof(supernet.build_layer(spec), supernet.layer_input_shape(spec, 1), f"l{j}")
    node = [
        e["dur"] / 1e3 for e in ev2 if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")
    ]
    tot = [r["dur"] / 1e3 for r in runs2]
    # per-run node sums
    s2 = np.array([r["ts"] for r in runs2])
    acc = np.zeros(len(runs2))
    for e in ev2:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            i = int(np.searchsorted(s2, e["ts"], side="right")) - 1
            if i >= 0:
                acc[i] += e["dur"] / 1e3
    rows.append((k[:70], innet[j], float(np.median(acc)), float(np.median(tot))))
for r in rows:
    print(f"{r[0]:70s} in-net {r[1]:.3f} iso-nodes {r[2]:.3f} iso-run {r[3]:.3f}")
a = np.array([r[1:] for r in rows])
print("sums", a.sum(0))
