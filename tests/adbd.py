"""A test ADB device daemon speaking the real ADB wire protocol over loopback TCP.

Debian ships the ``adb`` client but no ``adbd``, and CI has no phone. This daemon implements
the device side of the protocol described in AOSP's ``system/core/adb/protocol.txt`` and
``SYNC.TXT`` closely enough that both the stock ``adb`` client and ``adb-shell`` talk to it:

* 24-byte little-endian message headers (command, arg0, arg1, length, checksum, magic);
* CNXN / AUTH with real RSA checking: a random 20-byte TOKEN, the host's SIGNATURE verified
  (PKCS#1 v1.5 with the SHA-1 DigestInfo over the token, as libcrypto's ``RSA_sign`` does on
  the host), then RSAPUBLICKEY in Android's binary ``RSAPublicKey`` format, accepted without a
  prompt or rejected per configuration;
* OPEN / OKAY / WRTE / CLSE streams with one-packet-in-flight flow control;
* ``shell:<cmd>`` services run by ``/bin/sh -c`` in a sandbox, and ``sync:`` with STAT, LIST,
  SEND, RECV and QUIT.

The sandbox maps the Android paths the toolkit uses (``/data/local/tmp``, ``/sys``) onto a
temporary directory and puts a ``getprop`` on ``PATH``, so commands behave as on a phone
without touching the host. It is NOT part of the package: tests import it.

Fault knobs (:class:`Faults`): ``offline`` (the connection is closed at once), ``unauthorized``
(no key is ever accepted), ``drop_after`` (the TCP connection is cut when the N+1-th service is
opened) and ``storage_full`` (every SEND answers FAIL "No space left on device").
"""

from __future__ import annotations

import base64
import contextlib
import os
import secrets
import shutil
import signal
import socket
import stat
import struct
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

A_SYNC = 0x434E5953
A_CNXN = 0x4E584E43
A_AUTH = 0x48545541
A_OPEN = 0x4E45504F
A_OKAY = 0x59414B4F
A_CLSE = 0x45534C43
A_WRTE = 0x45545257

A_VERSION = 0x01000001
MAX_PAYLOAD = 256 * 1024
AUTH_TOKEN = 1
AUTH_SIGNATURE = 2
AUTH_RSAPUBLICKEY = 3
TOKEN_SIZE = 20

#: DER prefix of a SHA-1 DigestInfo; the host signs the token as if it were a SHA-1 digest.
SHA1_DIGEST_INFO = bytes.fromhex("3021300906052b0e03021a05000414")

SYNC_DATA_MAX = 64 * 1024


@dataclass
class Faults:
    offline: bool = False
    unauthorized: bool = False
    drop_after: int | None = None
    #: Cut the connection 0.1 s after starting a shell command that contains this text.
    drop_on: str | None = None
    #: How many connections the drop knobs cut in total (then the phone behaves again).
    drop_times: int = 1_000_000
    storage_full: bool = False


@dataclass
class DeviceProps:
    """What ``getprop`` and the fake sysfs report."""

    props: dict[str, str] = field(
        default_factory=lambda: {
            "ro.product.model": "AdbdTest",
            "ro.product.manufacturer": "compofa",
            "ro.product.name": "adbd_test",
            "ro.product.device": "adbdtest",
            "ro.board.platform": "testsoc",
            "ro.soc.model": "TestSoC 1000",
            "ro.build.version.release": "14",
            "ro.build.version.sdk": "34",
            "ro.product.cpu.abi": "arm64-v8a",
        }
    )
    n_cpus: int = 8
    temperatures_mc: tuple[int, ...] = (41000, 38500)


def parse_android_pubkey(blob: bytes) -> tuple[int, int]:
    """(n, e) from the base64 ``RSAPublicKey`` struct adb hosts send (text after the blob is
    the ``user@host`` comment)."""
    text = blob.rstrip(b"\0").split(b" ", 1)[0]
    raw = base64.b64decode(text)
    (n_words,) = struct.unpack_from("<I", raw, 0)
    n_bytes = n_words * 4
    modulus = int.from_bytes(raw[8 : 8 + n_bytes], "little")
    (exponent,) = struct.unpack_from("<I", raw, 8 + 2 * n_bytes)
    return modulus, exponent


def verify_signature(pubkey: tuple[int, int], token: bytes, signature: bytes) -> bool:
    n, e = pubkey
    k = (n.bit_length() + 7) // 8
    if len(signature) != k:
        return False
    em = pow(int.from_bytes(signature, "big"), e, n).to_bytes(k, "big")
    t = SHA1_DIGEST_INFO + token
    expected = b"\x00\x01" + b"\xff" * (k - 3 - len(t)) + b"\x00" + t
    return secrets.compare_digest(em, expected)


def _pack(command: int, arg0: int, arg1: int, data: bytes = b"") -> bytes:
    checksum = sum(data) & 0xFFFFFFFF
    return struct.pack("<6I", command, arg0, arg1, len(data), checksum, command ^ 0xFFFFFFFF) + data


class _Closed(Exception):
    pass


class _Stream:
    """One open service: incoming WRTE payloads are queued; outgoing writes wait for OKAY."""

    def __init__(self, conn: _Connection, local_id: int, remote_id: int) -> None:
        self.conn = conn
        self.local_id = local_id
        self.remote_id = remote_id
        self._buf = bytearray()
        self._cond = threading.Condition()
        self._okay = threading.Event()
        self._okay.set()
        self.closed = False
        self._clse_lock = threading.Lock()
        self._clse_sent = False

    def feed(self, data: bytes) -> None:
        with self._cond:
            self._buf.extend(data)
            self._cond.notify_all()

    def remote_closed(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify_all()
        self._okay.set()

    def read_exact(self, n: int) -> bytes:
        with self._cond:
            while len(self._buf) < n:
                if self.closed or self.conn.dead:
                    raise _Closed
                self._cond.wait(0.5)
            out = bytes(self._buf[:n])
            del self._buf[:n]
            return out

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            chunk, view = view[: self.conn.max_payload], view[self.conn.max_payload :]
            while not self._okay.wait(0.5):
                if self.closed or self.conn.dead:
                    raise _Closed
            if self.closed or self.conn.dead:
                raise _Closed
            self._okay.clear()
            self.conn.send(A_WRTE, self.local_id, self.remote_id, bytes(chunk))

    def got_okay(self) -> None:
        self._okay.set()

    def close(self) -> None:
        if not self.closed:
            # Wait for the last WRTE's OKAY so the client sees all data before CLSE.
            self._okay.wait(5)
        self.closed = True
        self.send_clse()

    def send_clse(self) -> None:
        # Either side may close first; the peer expects exactly one CLSE back.
        with self._clse_lock:
            if self._clse_sent or self.conn.dead:
                return
            self._clse_sent = True
        self.conn.send(A_CLSE, self.local_id, self.remote_id)


class _Connection:
    def __init__(self, daemon: AdbDaemon, sock: socket.socket) -> None:
        self.daemon = daemon
        self.sock = sock
        self.dead = False
        self.max_payload = MAX_PAYLOAD
        self._send_lock = threading.Lock()
        self._streams: dict[int, _Stream] = {}
        self._next_id = 1
        self._token = b""
        self._authorized = False
        self._services_opened = 0
        self._procs: list[subprocess.Popen[bytes]] = []

    # -- transport ---------------------------------------------------------------------------
    def send(self, command: int, arg0: int, arg1: int, data: bytes = b"") -> None:
        with self._send_lock:
            if self.dead:
                raise _Closed
            try:
                self.sock.sendall(_pack(command, arg0, arg1, data))
            except OSError:
                self.dead = True
                raise _Closed from None

    def _recv_exact(self, n: int) -> bytes:
        out = bytearray()
        while len(out) < n:
            chunk = self.sock.recv(n - len(out))
            if not chunk:
                raise _Closed
            out.extend(chunk)
        return bytes(out)

    def _recv(self) -> tuple[int, int, int, bytes]:
        header = self._recv_exact(24)
        command, arg0, arg1, length, _checksum, magic = struct.unpack("<6I", header)
        if magic != command ^ 0xFFFFFFFF:
            raise _Closed
        data = self._recv_exact(length) if length else b""
        return command, arg0, arg1, data

    def kill(self) -> None:
        self.dead = True
        # Like adbd: commands of a dropped connection die with it.
        for proc in self._procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
        for s in list(self._streams.values()):
            s.remote_closed()
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()

    # -- main loop ---------------------------------------------------------------------------
    def run(self) -> None:
        faults = self.daemon.faults
        try:
            if faults.offline:
                return
            while not self.dead:
                command, arg0, arg1, data = self._recv()
                if command == A_CNXN:
                    self.max_payload = max(4096, min(MAX_PAYLOAD, arg1))
                    self._send_token()
                elif command == A_AUTH:
                    self._on_auth(arg0, data)
                elif not self._authorized:
                    continue
                elif command == A_OPEN:
                    self._on_open(arg0, data)
                elif command == A_OKAY:
                    stream = self._streams.get(arg1)
                    if stream:
                        stream.got_okay()
                elif command == A_WRTE:
                    stream = self._streams.get(arg1)
                    if stream:
                        self.send(A_OKAY, stream.local_id, stream.remote_id)
                        stream.feed(data)
                elif command == A_CLSE:
                    stream = self._streams.pop(arg1, None)
                    if stream:
                        stream.remote_closed()
                        stream.send_clse()
        except (_Closed, OSError):
            pass
        finally:
            self.kill()

    def _send_token(self) -> None:
        self._token = secrets.token_bytes(TOKEN_SIZE)
        self.send(A_AUTH, AUTH_TOKEN, 0, self._token)

    def _banner(self) -> bytes:
        p = self.daemon.props.props
        text = (
            f"device::ro.product.name={p['ro.product.name']};"
            f"ro.product.model={p['ro.product.model']};"
            f"ro.product.device={p['ro.product.device']};"
            "features=fixed_push_mkdir"
        )
        return text.encode() + b"\0"

    def _accept(self) -> None:
        self._authorized = True
        self.send(A_CNXN, A_VERSION, MAX_PAYLOAD, self._banner())

    def _on_auth(self, kind: int, data: bytes) -> None:
        faults = self.daemon.faults
        if kind == AUTH_SIGNATURE:
            if not faults.unauthorized and any(
                verify_signature(k, self._token, data) for k in self.daemon.known_keys()
            ):
                self._accept()
            else:
                self._send_token()
        elif kind == AUTH_RSAPUBLICKEY:
            if faults.unauthorized:
                return  # a real phone waits for the user, who never answers
            try:
                key = parse_android_pubkey(data)
            except (ValueError, struct.error):
                return
            self.daemon.add_key(key)
            self._accept()

    def _on_open(self, remote_id: int, data: bytes) -> None:
        faults = self.daemon.faults
        limit = faults.drop_after
        self._services_opened += 1
        if limit is not None and self._services_opened > limit and self.daemon.take_drop():
            self.kill()
            raise _Closed
        service = data.rstrip(b"\0").decode("utf-8", "replace")
        if (
            faults.drop_on is not None
            and service.startswith("shell:")
            and faults.drop_on in service
            and self.daemon.take_drop()
        ):
            threading.Timer(0.1, self.kill).start()
        local_id = self._next_id
        self._next_id += 1
        stream = _Stream(self, local_id, remote_id)
        self._streams[local_id] = stream
        self.send(A_OKAY, local_id, remote_id)
        self.daemon.services.append(service)
        if service.startswith("shell:"):
            target = self._run_shell
            arg = service[len("shell:") :]
        elif service == "sync:":
            target = self._run_sync
            arg = ""
        else:
            target = self._run_unknown
            arg = service
        threading.Thread(target=self._service, args=(target, stream, arg), daemon=True).start()

    def _service(self, target, stream: _Stream, arg: str) -> None:
        try:
            target(stream, arg)
        except _Closed:
            pass
        finally:
            # Close before forgetting the stream: the OKAY for the last WRTE must still find it.
            with contextlib.suppress(_Closed):
                stream.close()
            self._streams.pop(stream.local_id, None)

    # -- services ----------------------------------------------------------------------------
    def _run_unknown(self, stream: _Stream, service: str) -> None:
        stream.write(f"closed: unknown service {service}".encode())

    def _run_shell(self, stream: _Stream, command: str) -> None:
        if not command.strip():
            return
        proc = self.daemon.popen_shell(command)
        self._procs.append(proc)
        assert proc.stdout is not None
        try:
            while True:
                chunk = os.read(proc.stdout.fileno(), 65536)
                if not chunk:
                    break
                stream.write(chunk)
        except _Closed:
            # The host hung up (e.g. a timeout): stop the command like adbd does.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            raise
        finally:
            proc.stdout.close()
            proc.wait()

    def _run_sync(self, stream: _Stream, _arg: str) -> None:
        while True:
            header = stream.read_exact(8)
            ident, length = header[:4], struct.unpack("<I", header[4:])[0]
            if ident == b"QUIT":
                return
            payload = stream.read_exact(length) if length else b""
            path = payload.decode("utf-8", "replace")
            if ident == b"STAT":
                stream.write(self._sync_stat(path))
            elif ident == b"LIST":
                stream.write(self._sync_list(path))
            elif ident == b"SEND":
                self._sync_send(stream, path)
            elif ident == b"RECV":
                self._sync_recv(stream, path)
            else:
                stream.write(_fail(f"unknown sync command {ident!r}"))
                return

    def _sync_stat(self, path: str) -> bytes:
        try:
            st = os.stat(self.daemon.host_path(path))
        except OSError:
            return b"STAT" + struct.pack("<3I", 0, 0, 0)
        return b"STAT" + struct.pack(
            "<3I", st.st_mode & 0xFFFFFFFF, st.st_size & 0xFFFFFFFF, int(st.st_mtime)
        )

    def _sync_list(self, path: str) -> bytes:
        out = bytearray()
        base = Path(self.daemon.host_path(path))
        try:
            names = [".", "..", *sorted(os.listdir(base))]
        except OSError:
            names = []
        for name in names:
            try:
                st = os.lstat(base / name)
            except OSError:
                continue
            raw = name.encode()
            out += b"DENT" + struct.pack(
                "<4I", st.st_mode & 0xFFFFFFFF, st.st_size & 0xFFFFFFFF, int(st.st_mtime), len(raw)
            )
            out += raw
        out += b"DONE" + struct.pack("<4I", 0, 0, 0, 0)
        return bytes(out)

    def _sync_send(self, stream: _Stream, spec: str) -> None:
        path, _, mode_text = spec.rpartition(",")
        if not path:
            path, mode_text = spec, "33188"
        try:
            mode = int(mode_text)
        except ValueError:
            mode = 0o100644
        target = Path(self.daemon.host_path(path))
        tmp = None
        fh = None
        failure = None
        if self.daemon.faults.storage_full:
            failure = "No space left on device"
        else:
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                tmp = target.with_name(f".{target.name}.adbd-tmp")
                fh = open(tmp, "wb")  # noqa: SIM115 - closed below after the DONE chunk
            except OSError as exc:
                failure = f"couldn't create file: {exc.strerror}"
        # The host streams all DATA chunks before it reads the reply, so drain them even when
        # the write is doomed (real adbd does the same).
        while True:
            header = stream.read_exact(8)
            ident, value = header[:4], struct.unpack("<I", header[4:])[0]
            if ident == b"DATA":
                data = stream.read_exact(value)
                if fh is not None:
                    fh.write(data)
            elif ident == b"DONE":
                break
            else:
                failure = failure or f"invalid sync message {ident!r}"
                break
        if fh is not None:
            fh.close()
        if failure is None and tmp is not None:
            os.chmod(tmp, stat.S_IMODE(mode) or 0o644)
            os.replace(tmp, target)
            stream.write(b"OKAY" + struct.pack("<I", 0))
        else:
            if tmp is not None and tmp.exists():
                tmp.unlink()
            stream.write(_fail(failure or "write failed"))

    def _sync_recv(self, stream: _Stream, path: str) -> None:
        try:
            with open(self.daemon.host_path(path), "rb") as fh:
                while True:
                    chunk = fh.read(SYNC_DATA_MAX)
                    if not chunk:
                        break
                    stream.write(b"DATA" + struct.pack("<I", len(chunk)) + chunk)
        except OSError as exc:
            stream.write(_fail(f"{exc.strerror}: {path}"))
            return
        stream.write(b"DONE" + struct.pack("<I", 0))


def _fail(message: str) -> bytes:
    raw = message.encode()
    return b"FAIL" + struct.pack("<I", len(raw)) + raw


class AdbDaemon:
    """Serve one fake phone on ``127.0.0.1:<port>`` (a free port >= 20000 when ``port`` is 0).

    ``root`` is the sandbox; ``/data/local/tmp`` and ``/sys`` inside commands and sync paths
    are rewritten to directories under it. ``authorized_keys`` are the public keys accepted
    without the RSAPUBLICKEY step (pass the host's key to simulate a phone that already trusts
    it); every key sent with RSAPUBLICKEY is accepted unless ``faults.unauthorized``.
    """

    def __init__(
        self,
        root: Path,
        *,
        faults: Faults | None = None,
        props: DeviceProps | None = None,
        port: int = 0,
    ) -> None:
        self.root = Path(root)
        self.faults = faults or Faults()
        self.props = props or DeviceProps()
        self.services: list[str] = []
        self.drops = 0
        self._keys: list[tuple[int, int]] = []
        self._keys_lock = threading.Lock()
        self._connections: list[_Connection] = []
        self._make_sandbox()
        self._server = _bind_free_port(port)
        self.port = self._server.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)

    @property
    def serial(self) -> str:
        return f"127.0.0.1:{self.port}"

    def take_drop(self) -> bool:
        with self._keys_lock:
            if self.drops >= self.faults.drop_times:
                return False
            self.drops += 1
            return True

    # -- keys ----------------------------------------------------------------------------------
    def known_keys(self) -> list[tuple[int, int]]:
        with self._keys_lock:
            return list(self._keys)

    def add_key(self, key: tuple[int, int]) -> None:
        with self._keys_lock:
            if key not in self._keys:
                self._keys.append(key)

    # -- sandbox -------------------------------------------------------------------------------
    @property
    def tmp_dir(self) -> Path:
        return self.root / "data" / "local" / "tmp"

    def _make_sandbox(self) -> None:
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        bin_dir = self.root / "bin"
        bin_dir.mkdir(exist_ok=True)
        props = "\n".join(f"[{k}]: [{v}]" for k, v in sorted(self.props.props.items()))
        (self.root / "props.txt").write_text(props + "\n")
        getprop = bin_dir / "getprop"
        getprop.write_text(
            "#!/bin/sh\n"
            f'PROPS="{self.root}/props.txt"\n'
            'if [ $# -eq 0 ]; then cat "$PROPS"; exit 0; fi\n'
            'sed -n "s/^\\[$1\\]: \\[\\(.*\\)\\]$/\\1/p" "$PROPS"\n'
        )
        getprop.chmod(0o755)
        cpu_root = self.root / "sys" / "devices" / "system" / "cpu"
        for i in range(self.props.n_cpus):
            freq = cpu_root / f"cpu{i}" / "cpufreq"
            freq.mkdir(parents=True, exist_ok=True)
            big = i >= self.props.n_cpus // 2
            (freq / "cpuinfo_max_freq").write_text("2840000\n" if big else "1780000\n")
            (freq / "scaling_cur_freq").write_text("2419200\n" if big else "1708800\n")
            (freq / "scaling_governor").write_text("schedutil\n")
        (cpu_root / "possible").write_text(f"0-{self.props.n_cpus - 1}\n")
        thermal = self.root / "sys" / "class" / "thermal"
        for i, temp in enumerate(self.props.temperatures_mc):
            zone = thermal / f"thermal_zone{i}"
            zone.mkdir(parents=True, exist_ok=True)
            (zone / "type").write_text(("cpu-big\n", "battery\n")[i % 2])
            (zone / "temp").write_text(f"{temp}\n")

    def host_path(self, path: str) -> str:
        for prefix in ("/data/local/tmp", "/sys"):
            if path == prefix or path.startswith(prefix + "/"):
                return str(self.root) + path
        return path

    def translate(self, command: str) -> str:
        # Map device paths inside a shell command line; good enough for the toolkit's commands.
        out = command.replace("/data/local/tmp", f"{self.root}/data/local/tmp")
        return out.replace("/sys/", f"{self.root}/sys/")

    def popen_shell(self, command: str) -> subprocess.Popen[bytes]:
        env = dict(os.environ)
        env["PATH"] = f"{self.root / 'bin'}:{env.get('PATH', '/usr/bin:/bin')}"
        env["ANDROID_DATA_TMP"] = str(self.tmp_dir)
        return subprocess.Popen(
            ["/bin/sh", "-c", self.translate(command)],
            cwd=self.root,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    # -- server --------------------------------------------------------------------------------
    def start(self) -> AdbDaemon:
        self._thread.start()
        return self

    def _accept_loop(self) -> None:
        try:
            self._server.settimeout(0.2)
        except OSError:
            return  # stopped before the thread got going
        while not self._stop.is_set():
            try:
                sock, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = _Connection(self, sock)
            self._connections.append(conn)
            threading.Thread(target=conn.run, daemon=True).start()

    def disconnect_all(self) -> None:
        for conn in list(self._connections):
            conn.kill()

    def stop(self) -> None:
        self._stop.set()
        self._server.close()
        self.disconnect_all()
        self._thread.join(timeout=2)

    def __enter__(self) -> AdbDaemon:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _bind_free_port(port: int) -> socket.socket:
    """A listening socket on 127.0.0.1; ports below 20000 (ADB's 5555-5585 included) are
    avoided so a real emulator or phone bridge never collides with the tests."""
    candidates = [port] if port else [secrets.randbelow(40000) + 20000 for _ in range(50)]
    last: OSError | None = None
    for candidate in candidates:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", candidate))
        except OSError as exc:
            sock.close()
            last = exc
            continue
        sock.listen(16)
        return sock
    raise OSError(f"no free port >= 20000: {last}")


def copy_tree(src: Path, dst: Path) -> None:
    shutil.copytree(src, dst, dirs_exist_ok=True)


def wait_for(predicate, timeout: float = 5.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()
