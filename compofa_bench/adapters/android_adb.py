"""``android-adb``: TFLite's ``benchmark_model`` on an Android phone over ADB.

This is how the OFA / CompOFA papers measured their phone latencies (Samsung Note10, Pixel):
the subnet is converted to ``.tflite`` on the host (:mod:`compofa_bench.tflite_convert`), pushed
with the user's ``benchmark_model`` binary into a fresh directory under ``/data/local/tmp``, run
there (pinned to the big cores with ``taskset`` when a CPU mask is given, as TFLite's
benchmarking guide recommends), and the tool's own timing summary is parsed
(:mod:`compofa_bench.benchmark_output`). The directory is removed afterwards, also after a
failure. The raw output is kept with every measurement.

Device options (``[options]``; see ``devices/android-example.toml`` and docs/android.md):

``serial``             ``host:port`` (after ``adb tcpip 5555``) or a USB serial number
``benchmark_binary``   local path of ``benchmark_model`` built for android_aarch64
``threads``            ``--num_threads`` (default 4)
``cpu_mask``           hex CPU mask for ``taskset`` (e.g. ``"f0"``: cores 4-7); empty: none
``xnnpack``            ``--use_xnnpack`` (default true)
``gpu``                ``--use_gpu`` (default false)
``op_profiling``       ``--enable_op_profiling`` (per-op table kept in the metadata)
``extra_args``         more ``benchmark_model`` flags, each passed shell-quoted
``remote_dir``         where run directories are made (default ``/data/local/tmp``)
``key_path``           the ADB private key (default ``$XDG_CONFIG_HOME/compofa-bench/adbkey``)
``connect_timeout_s``, ``auth_timeout_s``, ``command_timeout_s``
``retries``            reconnect-and-retry attempts after a dropped connection (default 2)
``cooldown_below_c``   before each model, wait until the hottest thermal zone matching
                       ``cooldown_zones`` (regex on ``"<zone>:<type>"``) is below this many °C,
                       polling every ``cooldown_poll_s``, at most ``cooldown_max_wait_s``
``record_state``       read frequencies and temperatures before and after each model (true)
``parity_check``, ``cache_dir``, ``precision``   conversion, as for ``tflite-local``

The measurement protocol maps onto ``benchmark_model``'s own loop: ``--warmup_runs``,
``--warmup_min_secs``, ``--num_runs`` (= ``min_runs``), ``--min_secs``, ``--max_secs``.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
import uuid
from pathlib import Path
from typing import Any, ClassVar

from compofa_bench import benchmark_output
from compofa_bench.adapters import android_probe as probe
from compofa_bench.adapters.android_transport import (
    AdbConnection,
    AdbDisconnected,
    quote_command,
)
from compofa_bench.adapters.base import Adapter, Prepared, Timing, Workload
from compofa_bench.adapters.options import parse_android_adb_options, physical_cores
from compofa_bench.adapters.tflite_local import _version
from compofa_bench.errors import DeviceError, MeasurementError
from compofa_bench.measure import Protocol

#: What a shell prints for a binary it cannot execute (wrong ABI, noexec mount, lost x bit);
#: the shell then exits 126 (cannot execute) or 127 (not found).
_EXEC_FAILURES = re.compile(
    r"Permission denied|not executable|Exec format error|can't execute|syntax error"
    r"|inaccessible or not found|No such file or directory|not found"
)


class BenchmarkRunError(MeasurementError):
    """A benchmark run produced no usable result; ``raw_output`` keeps what the tool printed."""

    def __init__(self, message: str, raw_output: str) -> None:
        super().__init__(message)
        self.raw_output = raw_output


def failures_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "compofa-bench" / "android-failures"


class AndroidAdbAdapter(Adapter):
    kind: ClassVar[str] = "android-adb"
    native_timing: ClassVar[bool] = True

    @classmethod
    def check_options(cls, spec: Any) -> None:
        cls(spec, connect=False)

    def __init__(self, spec: Any, connect: bool = True) -> None:
        super().__init__(spec)
        opts = parse_android_adb_options(spec.options, spec.name)
        self.options = opts
        self.serial = opts.serial
        self.binary = Path(opts.benchmark_binary)
        if spec.path is not None and not self.binary.is_absolute():
            self.binary = (Path(spec.path).parent / self.binary).resolve()
        if not self.binary.is_file():
            raise DeviceError(
                f"device {spec.name}: benchmark binary {self.binary} does not exist; download "
                "TFLite's nightly android_aarch64 benchmark_model or build it with bazel "
                "(see docs/android.md)"
            )
        self.binary_sha256 = _sha256(self.binary)
        self.threads = opts.threads or physical_cores()
        self.cpu_mask = opts.cpu_mask
        self.xnnpack = opts.xnnpack
        self.gpu = opts.gpu
        self.op_profiling = opts.op_profiling
        self.record_state = opts.record_state
        self.parity_check = opts.parity_check
        self.extra_args = list(opts.extra_args)
        self.remote_dir = opts.remote_dir
        self.retries = opts.retries
        self.command_timeout_s = opts.command_timeout_s
        self.cooldown = (
            probe.CooldownRule(
                below_c=opts.cooldown_below_c,
                zones=opts.cooldown_zones,
                max_wait_s=opts.cooldown_max_wait_s or 0.0,
                poll_s=opts.cooldown_poll_s or 0.5,
            )
            if opts.cooldown_below_c is not None
            else None
        )
        self.precision = opts.precision
        self.cache_dir = opts.cache_dir
        self.conn = AdbConnection(
            self.serial,
            key_path=opts.key_path,
            connect_timeout_s=opts.connect_timeout_s or 10.0,
            auth_timeout_s=opts.auth_timeout_s or 30.0,
        )
        self.phone: dict[str, Any] = {}
        if connect:
            # Connect now: an offline or unauthorized phone must fail before any work starts.
            self.conn.connect()
            self.phone = probe.identity(self.conn)

    # ------------------------------------------------------------------------------ describe
    def describe(self) -> dict[str, Any]:
        return {
            "runtime": "tflite benchmark_model",
            "benchmark_binary_sha256": self.binary_sha256,
            "converter": _version("litert-torch"),
            "threads": self.threads,
            "cpu_mask": self.cpu_mask,
            "xnnpack": self.xnnpack,
            "gpu": self.gpu,
            "precision": self.precision,
            "phone": self.phone,
        }

    # ------------------------------------------------------------------------------- prepare
    def prepare(self, workload: Workload) -> Prepared:
        from compofa_bench import tflite_convert

        info = tflite_convert.convert_workload(
            workload, self.cache_dir, precision=self.precision, parity=self.parity_check
        )
        run_dir = f"{self.remote_dir}/compofa-bench-{uuid.uuid4().hex[:12]}"
        handle = {
            "dir": run_dir,
            "model": f"{run_dir}/model.tflite",
            "binary": f"{run_dir}/benchmark_model",
            "local_model": str(info.path),
        }
        prepare_s = {"convert_s": info.convert_s, "parity_s": info.parity_s}
        prepared = Prepared(workload, handle, str(info.path), prepare_s)
        t0 = time.perf_counter()
        try:
            self._retrying(lambda: self._push(handle), "pushing the model")
        except BaseException:
            self.release(prepared)
            raise
        prepared.prepare_s["push_s"] = time.perf_counter() - t0
        return prepared

    def _push(self, handle: dict[str, str]) -> None:
        self.conn.check(f"mkdir -p {quote_command([handle['dir']])}")
        self.conn.push(self.binary, handle["binary"], mode=0o755)
        self.conn.push(handle["local_model"], handle["model"], mode=0o644)
        self.conn.check(f"chmod 755 {quote_command([handle['binary']])}")

    def _retrying(self, fn: Any, what: str) -> Any:
        """Run ``fn``; after a dropped connection reconnect and try again, ``retries`` times."""
        last: AdbDisconnected | None = None
        for attempt in range(self.retries + 1):
            try:
                if attempt:
                    time.sleep(min(2.0, 0.5 * attempt))
                    self.conn.connect()
                return fn()
            except AdbDisconnected as exc:
                last = exc
            except DeviceError as exc:
                if attempt == 0 or "offline" not in str(exc):
                    raise
                last = AdbDisconnected(str(exc))
        raise MeasurementError(
            f"{what} on {self.serial} failed: the connection dropped {self.retries + 1} times "
            f"(last: {last})"
        )

    # ---------------------------------------------------------------------------------- time
    def command(self, handle: dict[str, str], protocol: Protocol) -> str:
        argv: list[str] = []
        if self.cpu_mask:
            argv += ["taskset", self.cpu_mask]
        argv += [
            handle["binary"],
            f"--graph={handle['model']}",
            f"--num_threads={self.threads}",
            f"--warmup_runs={protocol.warmup_runs}",
            f"--warmup_min_secs={protocol.warmup_min_s:g}",
            f"--num_runs={protocol.min_runs}",
            f"--min_secs={protocol.min_s:g}",
            f"--max_secs={protocol.max_s:g}",
            f"--use_xnnpack={'true' if self.xnnpack else 'false'}",
        ]
        if self.gpu:
            argv.append("--use_gpu=true")
        if self.op_profiling:
            argv.append("--enable_op_profiling=true")
        argv += self.extra_args
        return f"cd {quote_command([handle['dir']])} && {quote_command(argv)} 2>&1"

    def _timeout(self, protocol: Protocol) -> float:
        if self.command_timeout_s:
            return self.command_timeout_s
        # Twice the budget the tool may use, plus model load and a slow first run.
        return 2 * (protocol.max_s + protocol.warmup_min_s) + 120.0

    def time(self, prepared: Prepared, protocol: Protocol) -> Timing:
        handle = prepared.handle
        extra: dict[str, Any] = {"threads": self.threads, "cpu_mask": self.cpu_mask}
        cmd = self.command(handle, protocol)
        pushed_ok = [True]

        def run_once() -> tuple[str, int | None]:
            if not pushed_ok[0]:
                # After a reconnect the run directory may be gone (phone rebooted, tmp wiped).
                self._push(handle)
            pushed_ok[0] = False
            if self.cooldown is not None:
                extra["cooldown"] = probe.cool_down(
                    lambda: probe.state(self.conn)["temperatures_c"], self.cooldown
                )
            if self.record_state:
                extra["phone_before"] = probe.state(self.conn)
            out, rc = self.conn.shell(cmd, timeout_s=self._timeout(protocol))
            if self.record_state:
                extra["phone_after"] = probe.state(self.conn)
            return out, rc

        out, rc = self._retrying(run_once, "running benchmark_model")
        if rc is None:
            raise self._fail("benchmark_model output ended without an exit status", out)
        if rc in (126, 127):
            binary_lines = [ln for ln in out.splitlines() if "benchmark_model" in ln]
            line = next(
                (ln for ln in binary_lines if _EXEC_FAILURES.search(ln)),
                out.strip().splitlines()[-1] if out.strip() else "no output",
            )
            raise DeviceError(
                f"the phone cannot execute {self.binary.name} (exit {rc}: {line.strip()[:200]}); "
                "it must be TFLite's benchmark_model built for android_aarch64"
            )
        try:
            result = benchmark_output.parse(out)
        except MeasurementError as exc:
            raise self._fail(f"{exc} (exit {rc})", out) from None
        if rc != 0:
            raise self._fail(f"benchmark_model exited with status {rc}", out)
        extra["benchmark"] = {
            "tool": result.tool,
            "init_ms": result.init_ms,
            "first_inference_ms": result.first_inference_ms,
            "warmup_summary_ms": result.warmup_ms,
            "info": result.info,
        }
        if result.by_node_type:
            extra["op_profile_by_type"] = [vars(op) for op in result.by_node_type]
        if result.run_order:
            extra["op_profile_run_order"] = [vars(op) for op in result.run_order]
        return Timing(
            samples_ms=[], summary_ms=dict(result.summary_ms), raw_output=out, extra=extra
        )

    def _fail(self, message: str, raw: str) -> BenchmarkRunError:
        """A failed run: the raw output goes to a file named in the error (the store keeps the
        error line), so nothing the phone printed is lost."""
        d = failures_dir()
        path = d / f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}.txt"
        try:
            d.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(raw)
            os.replace(tmp, path)
            where = f"; raw output saved to {path}"
        except OSError:
            where = ""
        return BenchmarkRunError(f"{message}{where}", raw)

    # ------------------------------------------------------------------------------ cleanup
    def release(self, prepared: Prepared) -> None:
        handle = prepared.handle
        if not handle:
            return
        rm = f"rm -rf {quote_command([handle['dir']])}"
        for attempt in range(2):
            try:
                if attempt:
                    self.conn.connect()
                self.conn.shell(rm, timeout_s=30)
                break
            except DeviceError:
                continue
        prepared.handle = None

    def close(self) -> None:
        self.conn.close()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]
