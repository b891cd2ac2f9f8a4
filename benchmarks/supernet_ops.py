"""Supernet operations side by side with the ofa package, on the same archs in one run.

Measures (median per arch, single intra-op thread):
  * MAC counting: ``supernet.count_macs`` (geometry, no model) vs extracting OFA's subnet and
    running ``ofa.utils.count_net_flops`` on it;
  * extraction: ``net.extract(arch)`` vs ``OFAMobileNetV3.get_active_subnet()``;
  * forward (batch 1): our supernet with ``set_active`` vs our extracted subnet vs OFA's
    supernet.

Usage:
  .venv/bin/python benchmarks/supernet_ops.py --n 20 --resolution 224 [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch

from compofa_bench import spaces, supernet


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n", type=int, default=20, help="number of archs (compofa space)")
    ap.add_argument("--resolution", type=int, default=224)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="write the medians here")
    args = ap.parse_args()

    from ofa.imagenet_classification.elastic_nn.networks import OFAMobileNetV3
    from ofa.utils import count_net_flops

    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    ofa = OFAMobileNetV3(
        ks_list=[3, 5, 7], expand_ratio_list=[3, 4, 6], depth_list=[2, 3, 4]
    ).eval()
    net = supernet.build("mbv3")
    net.load_ofa_state_dict(ofa.state_dict())
    net.eval()
    r = args.resolution
    archs = spaces.get("compofa", resolutions=[r]).sample_many(
        args.n, np.random.default_rng(args.seed)
    )
    x = torch.randn(1, 3, r, r)
    t: dict[str, list[float]] = {
        k: []
        for k in (
            "count_macs_ms",
            "ofa_extract_count_net_flops_ms",
            "extract_ms",
            "ofa_get_active_subnet_ms",
            "supernet_forward_ms",
            "subnet_forward_ms",
            "ofa_supernet_forward_ms",
        )
    }

    def timed(key: str, fn):
        t0 = time.perf_counter()
        out = fn()
        t[key].append((time.perf_counter() - t0) * 1e3)
        return out

    with torch.no_grad():
        for arch in archs:
            spec = arch.to_ofa()
            ofa.set_active_subnet(ks=spec["ks"], e=spec["e"], d=spec["d"])
            macs = timed("count_macs_ms", lambda a=arch: supernet.count_macs(a))
            flops = timed(
                "ofa_extract_count_net_flops_ms",
                lambda: count_net_flops(ofa.get_active_subnet(), (1, 3, r, r)),
            )
            assert abs(flops - macs) <= 1e-6 * macs
            timed("ofa_get_active_subnet_ms", ofa.get_active_subnet)
            sub = timed("extract_ms", lambda a=arch: net.extract(a)).eval()
            net.set_active(arch)
            for _ in range(2):  # warm-up
                net(x), sub(x), ofa(x)
            timed("supernet_forward_ms", lambda: net(x))
            timed("subnet_forward_ms", lambda s=sub: s(x))
            timed("ofa_supernet_forward_ms", lambda: ofa(x))

    med = {k: statistics.median(v) for k, v in t.items()}
    ratios = {
        "count_speedup_vs_ofa": med["ofa_extract_count_net_flops_ms"] / med["count_macs_ms"],
        "extract_vs_ofa": med["extract_ms"] / med["ofa_get_active_subnet_ms"],
        "supernet_vs_ofa_forward": med["supernet_forward_ms"] / med["ofa_supernet_forward_ms"],
        "subnet_vs_supernet_forward": med["subnet_forward_ms"] / med["supernet_forward_ms"],
    }
    for k, v in med.items():
        print(f"{k:34s} {v:9.3f}")
    for k, v in ratios.items():
        print(f"{k:34s} {v:9.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"n": args.n, "resolution": r, "median": med, "ratios": ratios}, f, indent=2)


if __name__ == "__main__":
    main()
