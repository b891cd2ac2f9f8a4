"""Supernet behaviour: extraction, export, checkpoints, reorganisation, BN recalibration,
single-layer modules and counting."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from _weights import randomize
from torch import nn

from compofa_bench import spaces, supernet
from compofa_bench.errors import ArchError, CheckpointError, SupernetError
from compofa_bench.supernet import static_layers

RES = 128


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def net() -> supernet.ElasticSupernet:
    torch.manual_seed(0)
    n = supernet.build("mbv3", width_mult=1.0, n_classes=10)
    randomize(n, torch.Generator().manual_seed(0))
    return n.eval()


@pytest.fixture(scope="module")
def archs() -> list[spaces.Arch]:
    rng = np.random.default_rng(0)
    out = [spaces.get("ofa").largest(RES), spaces.get("ofa").smallest(RES)]
    out += spaces.get("ofa", resolutions=[RES]).sample_many(3, rng)
    out += spaces.get("compofa", resolutions=[RES]).sample_many(2, rng)
    return out


def x_for(arch: spaces.Arch, n: int = 2, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, arch.resolution, arch.resolution, generator=g)


def close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-4) -> bool:
    a, b = a.detach(), b.detach()
    return float((a - b).abs().max() / b.abs().max()) <= tol


# ------------------------------------------------------------------ extraction


def test_extract_matches_supernet_and_is_independent(net, archs) -> None:
    for arch in archs:
        x = x_for(arch)
        with torch.no_grad():
            net.set_active(arch)
            ref = net(x)
            sub = net.extract(arch)
            assert not sub.training
            assert close(sub(x), ref)
    # No storage shared: changing the supernet leaves the subnet alone (and vice versa).
    arch = archs[2]
    sub = net.extract(arch)
    x = x_for(arch)
    with torch.no_grad():
        before = sub(x)
        supernet_ptrs = {p.data_ptr() for p in net.parameters()}
        supernet_ptrs |= {b.data_ptr() for b in net.buffers()}
        assert not any(p.data_ptr() in supernet_ptrs for p in sub.parameters())
        saved = copy.deepcopy(net.state_dict())
        for p in net.parameters():
            p.add_(1.0)
        assert torch.equal(sub(x), before)
        net.load_state_dict(saved)


def test_extract_does_not_change_active_subnet(net, archs) -> None:
    net.set_active(archs[0])
    x = x_for(archs[0])
    with torch.no_grad():
        before = net(x)
        net.extract(archs[1])
        assert torch.equal(net(x), before)
    assert net.active_arch(RES) == archs[0]


def test_extract_uses_only_standard_modules(net, archs) -> None:
    allowed = (
        nn.Conv2d,
        nn.BatchNorm2d,
        nn.ReLU,
        nn.Hardswish,
        nn.Hardsigmoid,
        nn.Linear,
        nn.Dropout,
        nn.AdaptiveAvgPool2d,
        nn.Sequential,
        nn.ModuleList,
        static_layers.StaticNet,
        static_layers.ConvBNAct,
        static_layers.MBConv,
        static_layers.Residual,
        static_layers.SqueezeExcite,
        static_layers.LinearHead,
    )
    sub = net.extract(archs[0])
    for m in sub.modules():
        assert isinstance(m, allowed), type(m)


def test_extracted_subnet_trains(net, archs) -> None:
    net.train()
    try:
        sub = net.extract(archs[3])
    finally:
        net.eval()
    assert sub.training
    opt = torch.optim.SGD(sub.parameters(), lr=0.1)
    x = x_for(archs[3], n=4)
    y = torch.tensor([0, 1, 2, 3])
    loss = nn.functional.cross_entropy(sub(x), y)
    loss.backward()
    assert all(p.grad is not None for p in sub.parameters())
    opt.step()
    net_before = net.state_dict()["blocks.1.conv.point_linear.conv.conv.weight"].clone()
    assert torch.equal(net.state_dict()["blocks.1.conv.point_linear.conv.conv.weight"], net_before)


def test_extracted_subnet_exports_to_onnx(net, archs, tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    arch = archs[2]
    sub = net.extract(arch).eval()
    x = x_for(arch, n=1)
    path = tmp_path / "sub.onnx"
    torch.onnx.export(sub, (x,), str(path), dynamo=False, input_names=["x"], opset_version=17)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = sess.run(None, {"x": x.numpy()})
    with torch.no_grad():
        ref = sub(x).numpy()
    assert np.max(np.abs(out - ref)) / np.max(np.abs(ref)) <= 1e-4
    import onnx

    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert {"Conv", "Gemm"} <= ops
    assert ops <= {
        "Conv",
        "Relu",
        "HardSwish",
        "HardSigmoid",
        "Mul",
        "Add",
        "GlobalAveragePool",
        "Flatten",
        "Gemm",
        "Clip",
        "Div",
        "Constant",
        "Reshape",
    }


def test_set_active_rejects_bad_archs(net) -> None:
    ok = spaces.get("ofa").largest(RES)
    with pytest.raises(ArchError, match="kernel 9"):
        net.set_active(spaces.Arch((9,) * 20, ok.e, ok.d, RES))
    with pytest.raises(ArchError, match="expand ratio 5"):
        net.set_active(spaces.Arch(ok.ks, (5,) * 20, ok.d, RES))
    with pytest.raises(ArchError, match="layout"):
        net.set_active(spaces.Arch((3,) * 9, (3,) * 9, (4, 4, 1), RES, (4, 4, 1)))
    with pytest.raises(SupernetError, match="unknown supernet base"):
        supernet.build("resnet")
    with pytest.raises(SupernetError, match="width_mult"):
        supernet.build("mbv3", width_mult=0)


# ------------------------------------------------------------------ checkpoints


def test_checkpoint_round_trip_and_compofa_format(net, archs, tmp_path: Path) -> None:
    sd = net.state_dict()
    raw = tmp_path / "ofa_mbv3_d234_e346_k357_w1.0"
    torch.save(sd, raw)
    # CompOFA: wrapped, DDP prefix, old block body name, extra entries.
    old = {
        "module." + k.replace(".conv.", ".mobile_inverted_conv.", 1)
        if k.startswith("blocks.")
        else "module." + k: v
        for k, v in sd.items()
    }
    assert any(".mobile_inverted_conv." in k for k in old)
    wrapped = tmp_path / "compofa.pth.tar"
    torch.save({"state_dict": old, "epoch": 3, "best_acc": 0.7}, wrapped)
    # Old OFA naming without the dynamic wrappers' inner module names.
    flat = {
        k.replace(".bn.bn.", ".bn.").replace(".conv.conv.weight", ".conv.weight"): v
        for k, v in sd.items()
    }
    flat_path = tmp_path / "old.pth"
    torch.save(flat, flat_path)
    x = x_for(archs[3])
    net.set_active(archs[3])
    with torch.no_grad():
        ref = net(x)
    for path in (raw, wrapped, flat_path):
        other = supernet.build("mbv3", n_classes=10).eval()
        other.load_checkpoint(path)
        other.set_active(archs[3])
        with torch.no_grad():
            assert torch.equal(other(x), ref), path


def test_checkpoint_errors_list_what_differs(net, tmp_path: Path) -> None:
    sd = net.state_dict()
    other = supernet.build("mbv3", n_classes=10)
    partial = {k: v for k, v in sd.items() if not k.startswith("blocks.5.")}
    partial["blocks.99.weird"] = torch.zeros(1)
    with pytest.raises(CheckpointError) as err:
        other.load_ofa_state_dict(partial)
    msg = str(err.value)
    assert "missing key(s): blocks.5." in msg and "unexpected key(s): blocks.99.weird" in msg
    assert "... and" in msg  # long lists are truncated
    assert "\n" not in msg

    wide = supernet.build("mbv3", width_mult=1.2, n_classes=10).state_dict()
    with pytest.raises(CheckpointError, match=r"shape mismatch.*first_conv.conv.weight.*width"):
        other.load_ofa_state_dict(wide)

    classes = supernet.build("mbv3", n_classes=1000).state_dict()
    with pytest.raises(
        CheckpointError,
        match=r"2 shape mismatch\(es\): classifier.linear.weight: checkpoint \(1000, 1280\) vs "
        r"model \(10, 1280\)",
    ):
        other.load_ofa_state_dict(classes)

    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a torch file"):
        other.load_checkpoint(garbage)
    with pytest.raises(CheckpointError, match="does not exist"):
        other.load_checkpoint(tmp_path / "missing.pth")
    unsafe = tmp_path / "unsafe.pth"
    torch.save({"state_dict": sd, "obj": Path("x")}, unsafe)  # not loadable with weights_only
    with pytest.raises(CheckpointError, match=r"holds a Python object \(pathlib.*not loaded"):
        other.load_checkpoint(unsafe)
    notsd = tmp_path / "notsd.pth"
    torch.save({"epoch": 3}, notsd)
    with pytest.raises(CheckpointError, match="not a tensor"):
        other.load_checkpoint(notsd)


def test_load_keeps_own_counters_when_missing(net) -> None:
    sd = {k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    other = supernet.build("mbv3", n_classes=10)
    other.load_ofa_state_dict(sd)
    assert torch.equal(
        other.state_dict()["first_conv.bn.running_var"], sd["first_conv.bn.running_var"]
    )


# ------------------------------------------------------------------ reorganisation


def test_reorganize_keeps_largest_subnet_function() -> None:
    torch.manual_seed(1)
    n = supernet.build("mbv3", n_classes=10)
    randomize(n, torch.Generator().manual_seed(5))
    n.eval()
    big = spaces.get("ofa").largest(RES)
    small = spaces.get("ofa").smallest(RES)
    x = x_for(big)
    with torch.no_grad():
        n.set_active(big)
        before = n(x)
        n.set_active(small)
        small_before = n(x)
        w_before = n.state_dict()["blocks.1.conv.point_linear.conv.conv.weight"].clone()
        n.reorganize_middle_weights()
        n.set_active(big)
        after = n(x)
        n.set_active(small)
        small_after = n(x)
    assert close(after, before, 1e-5)
    w_after = n.state_dict()["blocks.1.conv.point_linear.conv.conv.weight"]
    assert not torch.equal(w_after, w_before)  # something was permuted
    importance = w_after.abs().sum(dim=(0, 2, 3))
    assert torch.all(importance[:-1] >= importance[1:])
    for block in n.blocks[1:]:
        imp = block.conv.point_linear.conv.conv.weight.abs().sum(dim=(0, 2, 3))
        assert torch.all(imp[:-1] >= imp[1:])
    assert not close(small_after, small_before, 1e-5)  # smaller subnets keep the top channels


def test_reorganize_matches_ofa() -> None:
    ofa_nets = pytest.importorskip("ofa.imagenet_classification.elastic_nn.networks")
    torch.manual_seed(2)
    ofa = ofa_nets.OFAMobileNetV3(
        ks_list=[3, 5, 7], expand_ratio_list=[3, 4, 6], depth_list=[2, 3, 4], n_classes=10
    )
    randomize(ofa, torch.Generator().manual_seed(3))
    ours = supernet.build("mbv3", n_classes=10)
    ours.load_ofa_state_dict(ofa.state_dict())
    ofa.re_organize_middle_weights(expand_ratio_stage=1)
    ours.reorganize_middle_weights(expand_ratio_stage=1)
    ofa_sd = ofa.state_dict()
    for k, v in ours.state_dict().items():
        assert torch.equal(v, ofa_sd[k]), k


# ------------------------------------------------------------------ BN recalibration


def test_recalibrate_bn_matches_ofa_set_running_statistics(net, archs) -> None:
    elastic_utils = pytest.importorskip("ofa.imagenet_classification.elastic_nn.utils")
    ofa_nets = pytest.importorskip("ofa.imagenet_classification.elastic_nn.networks")
    arch = archs[3]
    g = torch.Generator().manual_seed(9)
    batches = [
        (torch.randn(n, 3, RES, RES, generator=g) * 2 + 0.5, torch.zeros(n)) for n in (3, 2, 4)
    ]
    ofa = ofa_nets.OFAMobileNetV3(
        ks_list=[3, 5, 7], expand_ratio_list=[3, 4, 6], depth_list=[2, 3, 4], n_classes=10
    )
    ofa.load_state_dict(net.state_dict())
    spec = arch.to_ofa()
    ofa.set_active_subnet(ks=spec["ks"], e=spec["e"], d=spec["d"])
    ofa_sub = ofa.get_active_subnet().eval()
    elastic_utils.set_running_statistics(ofa_sub, batches)

    sub = net.extract(arch)
    before = {k: v.clone() for k, v in sub.state_dict().items()}
    assert supernet.recalibrate_bn(sub, batches) == 9
    assert not sub.training
    ofa_sd = ofa_sub.state_dict()
    changed = 0
    for k, v in sub.state_dict().items():
        if k.endswith(("running_mean", "running_var")):
            assert torch.allclose(v, ofa_sd[k], rtol=1e-4, atol=1e-5), k
            changed += not torch.allclose(v, before[k])
        elif not k.endswith("num_batches_tracked"):
            assert torch.equal(v, before[k]), k  # weights untouched
    assert changed > 10

    # Recalibrating inside the supernet gives the same statistics for the active channels.
    work = supernet.build("mbv3", n_classes=10).eval()
    work.load_state_dict(net.state_dict())
    work.set_active(arch)
    supernet.recalibrate_bn(work, [b[0] for b in batches])
    again = work.extract(arch).state_dict()
    for k, v in sub.state_dict().items():
        if k.endswith(("running_mean", "running_var")):
            assert torch.allclose(again[k], v, rtol=1e-4, atol=1e-5), k
    with pytest.raises(SupernetError):
        supernet.recalibrate_bn(sub, [])


# ------------------------------------------------------------------ layers and counting


def test_build_layer_matches_extracted_layers(net, archs) -> None:
    arch = archs[4]
    sub = net.extract(arch)
    specs = net.layer_specs(arch)
    assert specs == supernet.layer_specs(arch, width_mult=1.0, n_classes=10)
    modules = [sub.first_conv, *sub.blocks] + [getattr(sub, n) for n in sub.head_order]
    assert len(modules) == len(specs)
    x = x_for(arch, n=1)
    with torch.no_grad():
        for spec, mod in zip(specs, modules, strict=True):
            layer = supernet.build_layer(spec)
            assert type(layer) is type(mod)
            assert {k: v.shape for k, v in layer.state_dict().items()} == {
                k: v.shape for k, v in mod.state_dict().items()
            }
            assert supernet.layer_params(spec) == sum(p.numel() for p in layer.parameters())
            shape = supernet.layer_input_shape(spec, batch_size=2)
            if spec.kind == "Logits":
                x = torch.flatten(x, 1)
            assert tuple(x.shape[1:]) == shape[1:], spec
            out = layer(torch.randn(shape))
            x = mod(x)
            assert out.shape[1:] == x.shape[1:]
    with pytest.raises(SupernetError):
        supernet.layer_input_shape(specs[0], 0)


def test_counts_from_geometry_equal_module_counts(net, archs) -> None:
    for w in (1.0, 1.2):
        n = net if w == 1.0 else supernet.build("mbv3", width_mult=w, n_classes=10)
        for arch in archs[:3]:
            sub = n.extract(arch)
            assert supernet.count_params(arch, w, n_classes=10) == sum(
                p.numel() for p in sub.parameters()
            )
    big, small = spaces.get("ofa").largest(224), spaces.get("ofa").smallest(224)
    assert supernet.count_macs(big) > supernet.count_macs(small) > 0
    assert supernet.count_macs(big, 1.2) > supernet.count_macs(big, 1.0)
    assert supernet.count_macs(big.with_resolution(160)) < supernet.count_macs(big)
    with pytest.raises(SupernetError):
        supernet.count_macs(big, base="nope")


# ------------------------------------------------------------------ training through the supernet


def test_supernet_trains_through_dynamic_ops(archs) -> None:
    torch.manual_seed(4)
    n = supernet.build("mbv3", n_classes=10)
    randomize(n, torch.Generator().manual_seed(6))
    arch = spaces.Arch((3,) * 20, (3,) * 20, (2,) * 5, RES)  # kernel 3 uses both transforms
    n.set_active(arch)
    n.train()
    sub = n.extract(arch)  # a train-mode copy taken before any update
    x = x_for(arch, n=4)
    y = torch.tensor([1, 2, 3, 4])
    # Train mode normalises with batch statistics in both; dropout is the only randomness.
    n.classifier.dropout.p = sub.classifier.dropout.p = 0.0
    bn_before = n.blocks[1].conv.depth_conv.bn.bn.running_mean.clone()
    out = n(x)
    assert close(out, sub(x), 1e-4)
    nn.functional.cross_entropy(out, y).backward()
    block = n.blocks[1].conv  # active (layer 0 of stage 0)
    assert block.depth_conv.conv.transform_matrix(7, 5).grad.abs().sum() > 0
    assert block.depth_conv.conv.transform_matrix(5, 3).grad.abs().sum() > 0
    mid = block.active_mid(block.max_in)
    ib_grad = block.inverted_bottleneck.conv.conv.weight.grad
    assert ib_grad[:mid].abs().sum() > 0 and ib_grad[mid:].abs().sum() == 0
    assert n.blocks[3].conv.point_linear.conv.conv.weight.grad is None  # depth 2: layer 2 idle
    # Only the active prefix of a dynamic BN's running stats moves.
    bn_after = n.blocks[1].conv.depth_conv.bn.bn.running_mean
    assert not torch.equal(bn_after[:mid], bn_before[:mid])
    assert torch.equal(bn_after[mid:], bn_before[mid:])


@pytest.mark.parametrize(("act", "use_se"), [("relu6", False), ("h_swish", True)])
def test_dynamic_mbconv_is_reusable_standalone(act: str, use_se: bool) -> None:
    from compofa_bench.supernet.dynamic_ops import DynamicMBConv

    torch.manual_seed(0)
    block = DynamicMBConv(40, 48, (3, 5, 7), (3, 4, 6), 2, act, use_se).eval()
    randomize(block, torch.Generator().manual_seed(1))
    x = torch.randn(2, 40, 16, 16)
    for k, e in ((3, 3), (5, 4), (7, 6)):
        block.set_active(k, e)
        static = block.extract(40).eval()
        assert static.depth_conv.conv.kernel_size == (k, k)
        assert static.inverted_bottleneck.conv.out_channels == 8 * round(40 * e / 8)
        assert (static.depth_conv.se is not None) if use_se else len(static.depth_conv) == 3
        with torch.no_grad():
            assert close(static(x), block(x), 1e-5)
    with pytest.raises(SupernetError, match="kernel 9"):
        block.set_active(9, 3)
