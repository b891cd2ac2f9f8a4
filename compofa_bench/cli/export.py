"""``export``: one chosen arch to ONNX, TFLite or a TensorRT engine."""

from __future__ import annotations

import argparse

from compofa_bench.cli.common import (
    add_net_args,
    add_output_args,
    add_store_arg,
    console,
    help_formatter,
    print_json,
    read_json,
)

DESCRIPTION = """\
Extract a subnet from a supernet checkpoint and export it, with a numerical parity check
against PyTorch (max abs difference reported; the export fails beyond the tolerance).

ARCH.json holds OFA's dict form {"ks": [...], "e": [...], "d": [...], "r": [224]}, e.g. a
target_<T>ms/arch.json written by `search`. Without --checkpoint the weights are random: the
file is right for latency, not for accuracy.
"""

EXAMPLES = """\
examples:
  compofa-bench export --arch out/cpu/target_8ms/arch.json --format onnx --out model.onnx
  compofa-bench export --arch a.json --checkpoint ofa_mbv3_d234_e346_k357_w1.0 \\
      --calib-data /data/imagenet --format tflite --out model.tflite --device cpu-ort
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export one arch (onnx, tflite, tensorrt) with parity check",
        description=DESCRIPTION,
        epilog=EXAMPLES,
        formatter_class=help_formatter(),
    )
    p.add_argument("--arch", required=True, metavar="ARCH.json")
    p.add_argument("--format", required=True, choices=["onnx", "tflite", "tensorrt"])
    p.add_argument("--out", required=True, metavar="FILE")
    p.add_argument("--space", default="ofa", help="space to validate the arch against")
    p.add_argument("--resolution", type=int, help="resolution when ARCH.json has none")
    add_net_args(p, checkpoint="supernet weights (OFA, CompOFA or ours)")
    p.add_argument("--calib-data", metavar="DATA", help="recalibrate BN on these images")
    p.add_argument("--calib-images", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=1, help="batch of the exported input")
    p.add_argument("--device", metavar="D", help="also measure the subnet on this device")
    add_store_arg(p)
    add_output_args(p)
    p.add_argument(
        "--force", action="store_true", help="export a batch the memory estimate refuses"
    )
    p.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    from compofa_bench import export as X
    from compofa_bench import jobs as J
    from compofa_bench import memory, spaces

    space = spaces.get(args.space)
    arch = spaces.Arch.from_ofa(
        read_json(args.arch, "arch file"), resolution=args.resolution, stage_sizes=space.stage_sizes
    )
    space.validate(arch, check_resolution=False)
    spaces.check_width(space, args.width_mult)
    memory.check_fits(
        [memory.estimate(arch, args.batch_size, args.width_mult, space.base, args.n_classes)],
        memory.available_bytes(),
        force=args.force,
    )
    source = X.SubnetSource(
        base=space.base,
        checkpoint=args.checkpoint,
        width_mult=args.width_mult,
        n_classes=args.n_classes,
        calib_data=args.calib_data,
        calib_images=args.calib_images,
    )
    builder = X.SubnetBuilder(source)
    builder.supernet()  # a bad checkpoint fails here, before anything is written
    res = X.export_arch(arch, args.format, args.out, source, builder, args.batch_size)
    if args.device:
        module, _ = builder.extract(arch)
        res.measured = J.measure_exported(module, arch, args.device, args.store, source)
    info = {"key": arch.key(), "arch": arch.to_ofa(), **res.to_dict()}
    if args.json:
        print_json(info)
        return 0
    out = console()
    out.print(
        f"exported {arch.key()} -> [bold]{res.path}[/bold] ({res.format}, "
        f"{res.export_seconds:.1f} s)"
    )
    out.print(
        f"weights: {res.weights}"
        + (
            f", BN recalibrated on {res.bn_recalibrated_images} images"
            if res.bn_recalibrated_images
            else ""
        )
    )
    if res.parity:
        out.print(
            f"parity vs PyTorch ({res.parity['runtime']}): max |diff| "
            f"{res.parity['max_abs_diff']:.3g} (tolerance {res.parity['tolerance']}) ok"
        )
    for note in res.notes:
        out.print(f"note: {note}")
    if res.measured:
        out.print(
            f"measured on {res.measured['device']}: {res.measured['median_ms']:.3f} ms "
            "median" + (" (unstable)" if res.measured["unstable"] else "")
        )
    return 0
