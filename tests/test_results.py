"""Reading results: tables that fit a file, compare, plots, exports, prune, retry, lut args."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch.nn as nn

from compofa_bench import spaces
from compofa_bench.cli import main
from compofa_bench.compare import Side, compare, latency_macs_points, load_side
from compofa_bench.devices import DeviceSpec
from compofa_bench.errors import StoreError
from compofa_bench.measure import Protocol, Stats
from compofa_bench.profile import profile_archs
from compofa_bench.store import Measurement, ResultStore

P = Protocol(min_runs=3)
ROOT = Path(__file__).resolve().parents[1]


def _add(store: ResultStore, device: str, fp: str, arch: spaces.Arch, samples: list[float],
         **kw: object) -> int:  # fmt: skip
    m = Measurement(
        device=device, adapter="cpu-ort", fingerprint={"stable_hash": fp}, protocol=P.to_dict(),
        protocol_hash=P.hash(), kind="network", workload_key=arch.key(),
        cache_key=f"mbv3-{arch.key()}", batch_size=1, stats=Stats.from_samples(samples),
        samples_ms=samples, space="compofa", arch=arch.to_ofa("r"), resolution=arch.resolution,
        width_mult=1.0, meta={"base": "mbv3", "n_classes": 1000, "weights": "random"},
    )  # fmt: skip
    for k, v in kw.items():
        setattr(m, k, v)
    return store.add(m)


ARCHS = spaces.get("compofa", [160, 192]).sample_many(6, np.random.default_rng(0))
#: Medians per device, chosen so the ranking changes: b swaps archs 0/1 and 4/5.
MEDIANS = {"dev-a": [5.0, 6.0, 7.0, 8.0, 9.0, 10.0], "dev-b": [3.5, 3.0, 4.0, 4.5, 6.0, 5.5]}


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    path = tmp_path / "r.db"
    with ResultStore(path) as store:
        for device, fp in (("dev-a", "aaaa1111aaaa1111"), ("dev-b", "bbbb2222bbbb2222")):
            for arch, med in zip(ARCHS, MEDIANS[device], strict=True):
                _add(store, device, fp, arch, [med * 0.98, med, med * 1.02, med, med * 1.3])
        m = Measurement(device="dev-a", adapter="cpu-ort", fingerprint={"stable_hash": "aaaa1111aaaa1111"},
                        protocol=P.to_dict(), protocol_hash=P.hash(), kind="network",
                        workload_key="broken", cache_key="broken", batch_size=1, status="failed",
                        error="boom")  # fmt: skip
        store.add(m)
    return path


def _image(path: Path, min_w: int = 400, min_h: int = 300) -> np.ndarray:
    import matplotlib.image as mpimg

    img = mpimg.imread(path)
    assert img.shape[0] >= min_h and img.shape[1] >= min_w, img.shape
    rgb = img[..., :3]
    not_white = (rgb < 0.9).any(axis=-1).mean()
    assert not_white > 0.01, f"{path} is blank"
    assert len(np.unique(rgb.reshape(-1, 3), axis=0)) > 10  # colours, not one flat fill
    return img


# ----------------------------------------------------------------------------- tables in a file


def _cli_to_file(args: list[str], out: Path, cwd: Path) -> str:
    """The CLI in a real subprocess with stdout redirected to a file (what CI logs see)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "80"}
    with out.open("w") as f:
        proc = subprocess.run([sys.executable, "-m", "compofa_bench", *args], stdout=f,
                              stderr=subprocess.PIPE, text=True, cwd=cwd, env=env, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return out.read_text()


def test_tables_in_a_file_are_not_cut(store_path: Path, tmp_path: Path) -> None:
    text = _cli_to_file(["results", "show", "--store", str(store_path)], tmp_path / "o.txt",
                        tmp_path)  # fmt: skip
    assert "…" not in text
    header = next(line for line in text.splitlines() if "workload" in line)
    for col in ("id", "device", "workload", "batch", "median ms", "95% CI ms", "p90 ms",
                "iqr/med", "cv", "runs", "status"):  # fmt: skip
        assert f" {col} " in header, (col, header)
    lines = text.splitlines()
    for arch in ARCHS:  # every key whole, on one line, in a row of its own device
        assert any(arch.key() in line and "dev-a" in line for line in lines), arch.key()
    assert max(len(line) for line in lines) > 80  # wider than the 80 columns rich assumed

    text = _cli_to_file(["results", "compare", "--store", str(store_path)], tmp_path / "c.txt",
                        tmp_path)  # fmt: skip
    assert "…" not in text
    for head in ("Spearman", "Kendall", "ratio geomean", "dev-b / dev-a", "rank a", "workload"):
        assert head in text, head
    assert all(a.key() in text for a in ARCHS)

    # another command's table: the rule lives in cli.common.console(), used by every command
    text = _cli_to_file(["devices", "list"], tmp_path / "d.txt", tmp_path)
    assert "…" not in text
    from compofa_bench.devices import list_devices

    for spec in list_devices():
        assert any(spec.name in line and spec.description in line for line in text.splitlines())


def test_a_narrow_terminal_still_shows_keys_whole(store_path: Path) -> None:
    """On a terminal narrower than the keys, print_table widens rather than cutting them."""
    from rich.console import Console
    from rich.table import Table

    from compofa_bench.cli.common import key_column, print_table

    buf = io.StringIO()
    out = Console(file=buf, width=40, force_terminal=True, color_system=None)
    t = Table(title="t")
    key_column(t, "workload")
    t.add_column("median ms", justify="right")
    for a in ARCHS:
        t.add_row(a.key(), "1.000")
    print_table(out, t)
    text = buf.getvalue()
    assert all(a.key() in text for a in ARCHS) and "…" not in text


def test_console_is_unbounded_only_off_a_terminal(tmp_path: Path) -> None:
    from compofa_bench.cli.common import UNBOUNDED_WIDTH, console

    with (tmp_path / "f.txt").open("w") as f:
        assert console(f).width == UNBOUNDED_WIDTH


def test_show_gives_the_spread_behind_the_flag(store_path: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    with ResultStore(store_path) as store:
        wide = [10.0, 10.0, 14.0, 6.0, 10.0, 16.0, 5.0, 10.0]  # IQR/median well above 0.10
        rid = _add(store, "dev-c", "cccc", ARCHS[0], wide)
        row = store.rows(device="dev-c")[0]
    assert main(["results", "show", "--store", str(store_path), "--device", "dev-c", "--json"]) == 0
    [shown] = json.loads(capsys.readouterr().out)
    assert shown["id"] == rid and shown["unstable"] is True
    assert shown["iqr_over_median"] == pytest.approx(row["iqr_ms"] / row["median_ms"])
    assert main(["results", "show", "--store", str(store_path), "--device", "dev-c"]) == 0
    text = capsys.readouterr().out
    line = next(x for x in text.splitlines() if ARCHS[0].key() in x)
    assert f"{row['iqr_ms'] / row['median_ms']:.3f}" in line and f"{row['cv']:.3f}" in line
    assert "unstable" in line and "threshold (0.1)" in text


# ----------------------------------------------------------------------------- compare


def test_compare_figures(store_path: Path, tmp_path: Path) -> None:
    from scipy import stats as sps

    a, b = load_side(store_path, device="dev-a"), load_side(store_path, device="dev-b")
    assert len(a.median_ms) == 6 and a.fingerprint_hash == "aaaa1111aaaa1111"
    res = compare([a, b], top=10)
    [pair] = res["pairs"]
    xa = [a.median_ms[k.key()] for k in ARCHS]
    xb = [b.median_ms[k.key()] for k in ARCHS]
    assert pair["spearman"] == pytest.approx(sps.spearmanr(xa, xb).statistic)
    assert pair["kendall"] == pytest.approx(sps.kendalltau(xa, xb).statistic)
    ratios = np.array(xb) / np.array(xa)
    assert pair["ratio_geomean"] == pytest.approx(float(np.exp(np.log(ratios).mean())))
    assert pair["ratio_min"] == pytest.approx(ratios.min())
    by_key = {w["key"]: w for w in res["workloads"]}
    assert by_key[ARCHS[1].key()]["ratio"]["dev-b"] == pytest.approx(3.0 / 6.0)
    # b swaps archs 0/1 and 4/5: those four move one place each, the rest keep their rank
    assert {m["key"]: m["move"] for m in pair["rank_moves"]} == {
        ARCHS[0].key(): 1.0,
        ARCHS[1].key(): -1.0,
        ARCHS[4].key(): 1.0,
        ARCHS[5].key(): -1.0,
    }
    assert len(compare([a, b], top=2)["pairs"][0]["rank_moves"]) == 2
    # three sides: each against the first; a side equal to the first agrees perfectly
    three = compare([a, b, Side("copy", "s", "copy", "h", dict(a.median_ms))])
    assert [(q["a"], q["b"]) for q in three["pairs"]] == [("dev-a", "dev-b"), ("dev-a", "copy")]
    assert three["pairs"][1]["spearman"] == pytest.approx(1.0)
    assert three["pairs"][1]["ratio_geomean"] == pytest.approx(1.0)
    assert three["pairs"][1]["rank_moves"] == []
    from compofa_bench.report import plot_compare

    _image(plot_compare(three, tmp_path / "three.png"), min_w=900)  # one panel per pair


def test_compare_sides_must_be_one_device_each(store_path: Path, tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="2 devices/fingerprints"):
        load_side(store_path)
    with pytest.raises(StoreError, match="no ok measurements"):
        load_side(store_path, device="nobody")
    only = Side("x", "s", "x", "h", {"k1": 1.0})
    with pytest.raises(StoreError, match="share 1 workload"):
        compare([only, only])


def test_compare_cli_two_stores_json_and_plot(store_path: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    # the same device name in two stores (two fingerprints): the labels tell them apart
    other = tmp_path / "other.db"
    with ResultStore(other) as store:
        for arch, med in zip(ARCHS, MEDIANS["dev-b"], strict=True):
            _add(store, "dev-a", "ffff0000ffff0000", arch, [med, med, med])
    png = tmp_path / "cmp.png"
    rc = main(["results", "compare", "--store", str(store_path), "--store", str(other),
               "--device", "dev-a", "--plot", str(png), "--json"])  # fmt: skip
    assert rc == 0
    res = json.loads(capsys.readouterr().out)
    assert [s["label"] for s in res["sides"]] == ["dev-a@aaaa1111", "dev-a@ffff0000"]
    assert res["common"] == 6 and res["plot"] == str(png)
    assert res["pairs"][0]["spearman"] == pytest.approx(
        compare([load_side(store_path, device="dev-a"), load_side(other)])["pairs"][0]["spearman"]
    )
    _image(png)
    assert main(["results", "compare", "--store", str(store_path), "--device", "dev-a"]) == 2
    assert "two or more sides" in capsys.readouterr().err


# ----------------------------------------------------------------------------- plots


def test_results_plot(store_path: Path, tmp_path: Path) -> None:
    series = latency_macs_points(store_path)
    assert set(series) == {"dev-a", "dev-b"} and len(series["dev-a"]) == 6
    assert {r for _, _, r in series["dev-a"]} <= {160, 192}
    assert all(100 < mmacs < 600 for mmacs, _, _ in series["dev-a"])  # CompOFA subnets' range
    png = tmp_path / "lm.png"
    assert main(["results", "plot", "--store", str(store_path), "--out", str(png)]) == 0
    _image(png, min_w=800)


def test_plot_bad_output_is_one_error_line(store_path: Path, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    (tmp_path / "file").write_text("")
    bad = str(tmp_path / "file" / "x.png")
    assert main(["results", "plot", "--store", str(store_path), "--out", bad]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot write plot") and err.count("\n") == 1


def test_pareto_with_remeasured_winners_and_missed(tmp_path: Path) -> None:
    from compofa_bench.report import plot_pareto

    frontier = [(5.0 + i, 0.70 + 0.01 * i) for i in range(10)]
    picks = [
        (7.0, 6.9, 0.72, 7.4, True),  # #14's verdict: MISSED
        (7.2, 7.1, 0.73, 7.0, None),  # measured under target: met
        (7.3, 7.2, 0.73, 7.9),  # no verdict, measured above target: missed
        (10.0, 9.8, 0.77),  # not re-measured (before #14, or no device)
    ]
    png = plot_pareto(frontier, picks, tmp_path / "pareto.png")
    _image(png)


def test_labels_do_not_overlap() -> None:
    from matplotlib.text import Text

    from compofa_bench.report import _pyplot, place_labels

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 4), dpi=100)
    ax.set_xlim(0, 10)
    ax.set_ylim(0, 10)
    points = [(5.0, 5.0, f"label {i}") for i in range(6)] + [(5.2, 5.1, "close by")]
    texts = place_labels(ax, points)
    renderer = fig.canvas.get_renderer()
    boxes = []
    for t in texts:  # the text alone, not its leader line (which reaches the point)
        t.update_positions(renderer)
        boxes.append(Text.get_window_extent(t, renderer))
    assert all(b.width > 20 and b.x0 > 100 for b in boxes)  # real positions, near the middle
    plt.close(fig)
    for i in range(len(boxes)):
        for j in range(i + 1, len(boxes)):
            assert not boxes[i].overlaps(boxes[j]), (points[i], points[j])


# ----------------------------------------------------------------------------- exports


def test_json_export_is_nested_and_samples_csv_is_long(store_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "all.json"
    assert main(["results", "export", "--store", str(store_path), "--format", "json",
                 "--samples", "--out", str(out)]) == 0  # fmt: skip
    rows = json.loads(out.read_text())
    assert not any(k.endswith("_json") for r in rows for k in r)
    ok = [r for r in rows if r["status"] == "ok"]
    assert ok[0]["arch"]["r"] == [ARCHS[0].resolution] and isinstance(ok[0]["samples_ms"], list)
    assert ok[0]["unstable"] in (True, False)
    csv_path = tmp_path / "samples.csv"
    assert main(["results", "export", "--store", str(store_path), "--format", "csv",
                 "--samples", "--out", str(csv_path)]) == 0  # fmt: skip
    long = list(csv.DictReader(csv_path.open()))
    assert len(long) == sum(len(r["samples_ms"]) for r in ok)  # one row per timed run
    first = [r for r in long if r["id"] == str(ok[0]["id"])]
    assert [float(r["latency_ms"]) for r in first] == ok[0]["samples_ms"]
    assert [r["run"] for r in first] == [str(i) for i in range(len(first))]
    assert first[0]["workload_key"] == ARCHS[0].key() and first[0]["device"] == "dev-a"


# ----------------------------------------------------------------------------- prune, retry


def test_prune_is_a_dry_run_until_yes(store_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with ResultStore(store_path) as store:
        _add(store, "dev-a", "aaaa1111aaaa1111", ARCHS[0], [4.0, 4.0, 4.0])  # supersedes one
        _add(store, "dev-b", "bbbbNEWbbbbNEW00", ARCHS[0], [4.0, 4.0, 4.0])  # dev-b changed
        before = store.count()
    args = ["results", "prune", "--store", str(store_path), "--failed", "--duplicates",
            "--old-fingerprints", "--json"]  # fmt: skip
    assert main(args) == 0
    dry = json.loads(capsys.readouterr().out)
    assert dry["dry_run"] and dry["removed"] == 0
    assert dry["by_reason"] == {"failed": 1, "duplicate": 1, "old fingerprint": 6}
    with ResultStore(store_path, readonly=True) as store:
        assert store.count() == before
    assert main([*args[:-1], "--yes"]) == 0
    assert "removed 8 row(s)" in capsys.readouterr().out
    with ResultStore(store_path, readonly=True) as store:
        assert store.count() == before - 8
        assert store.count(status="failed") == 0
        assert {r["fingerprint_hash"] for r in store.rows(device="dev-b")} == {"bbbbNEWbbbbNEW00"}
    assert main(["results", "prune", "--store", str(store_path)]) == 2
    assert "say what to prune" in capsys.readouterr().err


def tiny(width: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(width, 4)).eval()  # fmt: skip


def test_retry_measures_unstable_rows_again(tmp_path: Path) -> None:
    """Real ONNX Runtime: a threshold no measurement can meet makes every row unstable; retry
    measures them again with the stored protocol, and prune --duplicates drops the old rows."""
    from compofa_bench.retry import group_rows, retry_group, unstable_rows

    proto = Protocol(warmup_runs=1, warmup_min_s=0.0, min_runs=5, min_s=0.0, max_s=1.0,
                     unstable_threshold=1e-12)  # fmt: skip
    spec = DeviceSpec("t", "cpu-ort", {"threads": 1, "cache_dir": str(tmp_path / "c")}, proto)
    archs = spaces.get("compofa", [32]).sample_many(2, np.random.default_rng(1))

    def build(arch: spaces.Arch) -> nn.Module:
        return tiny(4 + arch.d[0])

    with ResultStore(tmp_path / "r.db") as store:
        profile_archs(archs, [spec], store, space="compofa",
                      build_module=build)  # fmt: skip
        rows = unstable_rows(store)
        assert len(rows) == 2
        [group] = group_rows(rows)
        assert group.skipped is None and group.protocol["unstable_threshold"] == 1e-12
        s = retry_group(group, spec, store, build_module=build)
        assert s.to_dict()["measured"] == 2
        new = store.rows(device="t")
        assert len(new) == 4 and len({r["protocol_hash"] for r in new}) == 1  # same protocol
        assert [r["id"] for r in store.prune_candidates(duplicates=True)] == [
            new[0]["id"], new[1]["id"]
        ]  # fmt: skip
        other = DeviceSpec("t", "cpu-ort", {"threads": 2, "cache_dir": str(tmp_path / "c")}, proto)
        from compofa_bench.errors import DeviceError

        with pytest.raises(DeviceError, match="fingerprint"):
            retry_group(group, other, store, build_module=build)


def test_retry_cli_dry_run(store_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["results", "retry", "--store", str(store_path), "--dry-run"]) == 0
    assert "no unstable rows" in capsys.readouterr().out
    with ResultStore(store_path) as store:
        _add(store, "cpu-ort-1t", "eeee", ARCHS[2], [10.0, 5.0, 15.0, 10.0, 20.0])
    assert main(["results", "retry", "--store", str(store_path), "--dry-run", "--json"]) == 0
    [g] = json.loads(capsys.readouterr().out)["groups"]
    assert g["device"] == "cpu-ort-1t" and g["would_retry"] == 1 and g["keys"] == [ARCHS[2].key()]


# ----------------------------------------------------------------------------- lut argument


def test_lut_table_argument_one_convention(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    table = ROOT / "lookup_tables" / "cpu-ort-1t-compofa.json"
    if not table.exists():
        pytest.skip("no committed lookup table")
    assert main(["lut", "show", "--lut", str(table), "--json"]) == 0
    new = capsys.readouterr()
    assert new.err == ""
    assert main(["lut", "show", str(table), "--json"]) == 0  # the old spelling still works
    old = capsys.readouterr()
    assert old.out == new.out
    assert old.err.startswith("deprecated: `lut show TABLE`") and old.err.count("\n") == 1
    assert main(["lut", "show"]) == 2
    assert "--lut TABLE" in capsys.readouterr().err


# ----------------------------------------------------------------------------- two real devices


@pytest.mark.slow
def test_compare_real_stores_cpu_ort_and_tflite(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    """cpu-ort-1t and tflite-local, each into its own store, compared by the CLI. Three tiny
    workloads whose work differs 16x step to step (TFLite conversion costs seconds a model)."""
    pytest.importorskip("litert_torch", reason="tflite-local needs the tflite extra")
    pytest.importorskip("ai_edge_litert", reason="tflite-local needs the tflite extra")
    from compofa_bench.devices import load_device

    monkeypatch.setenv("COMPOFA_BENCH_CACHE", str(tmp_path / "cache"))
    archs = spaces.get("compofa", [64]).sample_many(3, np.random.default_rng(0))
    widths = {a.key(): w for a, w in zip(archs, (4, 64, 1024), strict=True)}
    fast = {"warmup_runs": 2, "warmup_min_s": 0.0, "min_runs": 10, "min_s": 0.05, "max_s": 2.0}
    stores = []
    for name in ("cpu-ort-1t", "tflite-local"):
        spec = load_device(name)
        if name == "tflite-local":
            spec = spec.with_options(cache_dir=str(tmp_path / "tflite"))
        path = tmp_path / f"{name}.db"
        with ResultStore(path) as store:
            [s] = profile_archs(archs, [spec], store, space="compofa",
                                protocol_overrides=fast,
                                build_module=lambda a: tiny(widths[a.key()]))  # fmt: skip
        assert s.to_dict()["measured"] == 3, s.to_dict()["failed"]
        stores.append(path)
    png = tmp_path / "cmp.png"
    rc = main(["results", "compare", "--store", str(stores[0]), "--store", str(stores[1]),
               "--plot", str(png), "--json"])  # fmt: skip
    assert rc == 0
    res = json.loads(capsys.readouterr().out)
    assert [s["device"] for s in res["sides"]] == ["cpu-ort-1t", "tflite-local"]
    assert res["common"] == 3
    [pair] = res["pairs"]
    a, b = load_side(stores[0]), load_side(stores[1])
    keys = [x.key() for x in archs]
    ratios = [b.median_ms[k] / a.median_ms[k] for k in keys]
    by_key = {w["key"]: w for w in res["workloads"]}
    assert [by_key[k]["ratio"]["tflite-local"] for k in keys] == pytest.approx(ratios)
    assert pair["ratio_min"] == pytest.approx(min(ratios))
    # 16x more work per step: both runtimes rank the three alike (at most one adjacent swap)
    assert pair["spearman"] >= 0.5
    _image(png)
