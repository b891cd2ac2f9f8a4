"""ADB without the ``adb`` server: keys, connection, shell and file transfer over adb-shell.

``adb-shell`` (pure Python, the ``android`` extra) speaks the ADB wire protocol directly to the
phone's ``adbd``: over TCP after ``adb tcpip 5555`` (``host:port``), or over USB with
``adb-shell[usb]`` (libusb; the ``adb`` server must not hold the phone at the same time).

The host key is an RSA-2048 key in the user's config directory
(``$XDG_CONFIG_HOME/compofa-bench/adbkey``, default ``~/.config/compofa-bench/adbkey``), made on
first use with 0600 permissions. It is never printed or logged. The first connection makes the
phone show "Allow USB debugging?": the user must accept it (tick "Always allow").

Every failure of the transport is turned into :class:`DeviceError` (cannot reach / use the
phone) or :class:`AdbDisconnected` (the connection dropped: the caller may reconnect and retry).
"""

from __future__ import annotations

import contextlib
import os
import shlex
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compofa_bench.errors import DeviceError, MissingDependencyError
from compofa_bench.fileio import atomic_path

RC_MARKER = "__COMPOFA_RC="


class AdbDisconnected(DeviceError):
    """The connection to the phone dropped in the middle of a command."""


def config_dir() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "compofa-bench"


def default_key_path() -> Path:
    return config_dir() / "adbkey"


def ensure_key(path: str | Path | None = None) -> Path:
    """The private key path, creating the key pair (0600) when absent."""
    key = Path(path) if path else default_key_path()
    if key.is_file():
        if key.stat().st_mode & 0o077:
            # A private key readable by others is a credential leak; tighten it like ssh would
            # insist on.
            key.chmod(0o600)
        if not Path(str(key) + ".pub").is_file():
            _write_public(key)
        return key
    try:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa
    except ImportError:
        raise MissingDependencyError("cryptography", "android", "Creating an ADB key") from None
    key.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.private_bytes(
        encoding=serialization.Encoding.PEM,
        format=serialization.PrivateFormat.PKCS8,
        encryption_algorithm=serialization.NoEncryption(),
    )
    # atomic_path's temporary file is 0600 from creation, so the key is never readable by
    # others, and a crash mid-write leaves no half key that the next run would trust.
    with atomic_path(key, mode=0o600) as tmp:
        tmp.write_bytes(pem)
    _write_public(key)
    return key


def _write_public(key: Path) -> None:
    from adb_shell.auth.keygen import write_public_keyfile

    with atomic_path(str(key) + ".pub") as tmp:
        write_public_keyfile(str(key), str(tmp))


def _adb_shell() -> Any:
    try:
        import adb_shell  # noqa: F401
        from adb_shell import adb_device, exceptions
    except ImportError:
        raise MissingDependencyError("adb-shell", "android", "The android-adb device") from None
    return adb_device, exceptions


def quote_command(argv: list[str]) -> str:
    return " ".join(shlex.quote(str(a)) for a in argv)


@dataclass(frozen=True)
class Endpoint:
    """Where the phone is: ``host:port`` (TCP) or a USB serial number."""

    serial: str

    @property
    def is_tcp(self) -> bool:
        return ":" in self.serial

    def host_port(self) -> tuple[str, int]:
        host, _, port = self.serial.rpartition(":")
        try:
            return host, int(port)
        except ValueError:
            raise DeviceError(f"bad ADB address {self.serial!r}: expected host:port") from None


def _eof_transport_cls() -> Any:
    from adb_shell.transport.tcp_transport import TcpTransport

    class EofTcpTransport(TcpTransport):  # type: ignore[misc]
        """adb-shell spins until its timeout when the peer closes the socket (select says
        readable, recv gives b''); raise at once instead so a dropped phone is noticed in
        milliseconds, not after a whole command timeout."""

        def bulk_read(self, numbytes: int, transport_timeout_s: float | None) -> bytes:
            data = super().bulk_read(numbytes, transport_timeout_s)
            if numbytes and not data:
                raise ConnectionResetError("the device closed the connection")
            return data

    return EofTcpTransport


class AdbConnection:
    """One authenticated ADB connection with shell, push, pull and reconnect."""

    def __init__(
        self,
        serial: str,
        key_path: str | Path | None = None,
        connect_timeout_s: float = 10.0,
        auth_timeout_s: float = 30.0,
    ) -> None:
        self.endpoint = Endpoint(serial)
        self.key_path = key_path
        self.connect_timeout_s = connect_timeout_s
        self.auth_timeout_s = auth_timeout_s
        self._device: Any = None
        self._adb_device, self._exc = _adb_shell()

    @property
    def serial(self) -> str:
        return self.endpoint.serial

    def _transient(self) -> tuple[type[BaseException], ...]:
        e = self._exc
        return (
            OSError,
            e.TcpTimeoutException,
            e.AdbTimeoutError,
            e.AdbConnectionError,
            e.InvalidResponseError,
            e.InvalidCommandError,
            e.InvalidChecksumError,
        )

    def connect(self) -> None:
        from adb_shell.auth.sign_pythonrsa import PythonRSASigner

        self.close()
        key = ensure_key(self.key_path)
        signer = PythonRSASigner.FromRSAKeyPath(str(key))
        if self.endpoint.is_tcp:
            host, port = self.endpoint.host_port()
            transport = _eof_transport_cls()(host, port)
            device = self._adb_device.AdbDevice(
                transport, default_transport_timeout_s=self.connect_timeout_s
            )
        else:
            try:
                device = self._adb_device.AdbDeviceUsb(
                    serial=self.serial, default_transport_timeout_s=self.connect_timeout_s
                )
            except self._exc.InvalidTransportError:
                raise MissingDependencyError("libusb1", "android-usb", "ADB over USB") from None
            except Exception as exc:  # UsbDeviceNotFoundError and libusb errors
                raise DeviceError(
                    f"no USB device with serial {self.serial} ({exc}); check `lsusb`, the "
                    "cable, and that no `adb` server holds the phone (`adb kill-server`)"
                ) from None
        asked: list[bool] = []
        try:
            device.connect(
                rsa_keys=[signer],
                auth_timeout_s=self.auth_timeout_s,
                # adb-shell calls this right before it sends the public key, i.e. when the
                # phone did not know the key and is now showing its prompt.
                auth_callback=lambda _dev: asked.append(True),
            )
        except self._exc.DeviceAuthError as exc:
            raise DeviceError(f"device {self.serial} rejected authentication: {exc}") from None
        except (self._exc.TcpTimeoutException, self._exc.AdbTimeoutError):
            device.close()
            if asked:
                raise self._unauthorized() from None
            raise DeviceError(
                f"device {self.serial} is offline: it accepted the connection but did not "
                "answer the ADB handshake (reboot the phone or toggle USB debugging)"
            ) from None
        except (ConnectionRefusedError, ConnectionResetError, BrokenPipeError) as exc:
            device.close()
            raise DeviceError(
                f"device {self.serial} is offline or unreachable ({exc.strerror or exc}); "
                "check the address, that the phone is on the network and `adb tcpip 5555` "
                "was run while it was on USB"
            ) from None
        except OSError as exc:
            device.close()
            raise DeviceError(f"cannot connect to device {self.serial}: {exc}") from None
        self._device = device

    def _unauthorized(self) -> DeviceError:
        return DeviceError(
            f"device {self.serial} is unauthorized: unlock the phone and accept the "
            f"'Allow USB debugging?' prompt for this computer's key ({self.key_path or default_key_path()}.pub), "
            "ticking 'Always allow', then rerun"
        )

    def ensure(self) -> Any:
        if self._device is None or not self._device.available:
            self.connect()
        return self._device

    def close(self) -> None:
        if self._device is not None:
            # closing a dead socket must not mask the real error
            with contextlib.suppress(Exception):
                self._device.close()
            self._device = None

    # ----------------------------------------------------------------------------- commands
    def shell(self, command: str, timeout_s: float = 60.0) -> tuple[str, int | None]:
        """Run ``command`` (already quoted) and return (output, exit status).

        ADB's v1 shell merges stdout and stderr and drops the exit status, so the status is
        echoed after a marker; ``None`` means the marker never came (output cut short).
        """
        device = self.ensure()
        # A subshell, so that an `exit` inside the command still reaches the marker.
        wrapped = f"( {command} ); echo {RC_MARKER}$?"
        try:
            out = device.shell(
                wrapped,
                transport_timeout_s=timeout_s,
                read_timeout_s=timeout_s,
                timeout_s=timeout_s,
                decode=False,
            )
        except self._transient() as exc:
            self.close()
            raise AdbDisconnected(
                f"connection to {self.serial} lost during a command ({_describe(exc)})"
            ) from None
        text = out.decode("utf-8", "replace") if isinstance(out, bytes) else str(out)
        idx = text.rfind(RC_MARKER)
        if idx < 0:
            return text, None
        rc_text = text[idx + len(RC_MARKER) :].strip().split()[0] if text[idx:].strip() else ""
        try:
            rc = int(rc_text)
        except ValueError:
            rc = None
        return text[:idx], rc

    def check(self, command: str, timeout_s: float = 60.0) -> str:
        out, rc = self.shell(command, timeout_s)
        if rc != 0:
            raise DeviceError(
                f"command failed on {self.serial} (exit {rc}): {command[:120]}: "
                f"{out.strip()[-300:] or 'no output'}"
            )
        return out

    def push(
        self, local: str | Path, remote: str, mode: int = 0o644, timeout_s: float = 120.0
    ) -> None:
        device = self.ensure()
        try:
            device.push(
                str(local),
                remote,
                st_mode=stat.S_IFREG | mode,
                transport_timeout_s=timeout_s,
                read_timeout_s=timeout_s,
            )
        except self._exc.PushFailedError as exc:
            message = _push_message(exc)
            if "space" in message.lower():
                raise DeviceError(
                    f"device {self.serial} storage is full while pushing {Path(local).name} "
                    f"to {remote}: free space on the phone ({message})"
                ) from None
            raise DeviceError(f"push of {Path(local).name} to {remote} failed: {message}") from None
        except self._exc.AdbCommandFailureException as exc:
            raise DeviceError(f"push of {Path(local).name} to {remote} failed: {exc}") from None
        except self._transient() as exc:
            self.close()
            raise AdbDisconnected(
                f"connection to {self.serial} lost while pushing {Path(local).name} "
                f"({_describe(exc)})"
            ) from None

    def pull(self, remote: str, local: str | Path, timeout_s: float = 120.0) -> None:
        device = self.ensure()
        try:
            device.pull(remote, str(local), transport_timeout_s=timeout_s, read_timeout_s=timeout_s)
        except self._exc.AdbCommandFailureException as exc:
            raise DeviceError(f"pull of {remote} failed: {exc}") from None
        except self._transient() as exc:
            self.close()
            raise AdbDisconnected(
                f"connection to {self.serial} lost while pulling {remote} ({_describe(exc)})"
            ) from None


def _push_message(exc: BaseException) -> str:
    arg = exc.args[0] if exc.args else ""
    if isinstance(arg, (bytes, bytearray)):
        return arg.decode("utf-8", "replace")
    return str(arg)


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
