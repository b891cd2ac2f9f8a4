"""The test ADB daemon is faithful (stock adb client, adb-shell) and the ADB transport layer
(keys, auth, offline/unauthorized/full-storage faults) behaves."""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from adbd import AdbDaemon, Faults, parse_android_pubkey, verify_signature

pytest.importorskip("adb_shell")

from compofa_bench.adapters import android_transport as at
from compofa_bench.errors import DeviceError


@pytest.fixture
def config_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "config"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home))
    return home


def test_key_is_created_private_in_xdg_config(config_home: Path) -> None:
    key = at.ensure_key()
    assert key == config_home / "compofa-bench" / "adbkey"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert key.read_text().startswith("-----BEGIN PRIVATE KEY-----")
    pub = Path(str(key) + ".pub").read_text()
    n, e = parse_android_pubkey(pub.encode())
    assert e == 65537 and n.bit_length() == 2048
    # Reused, not regenerated; permissions that leaked are tightened.
    before = key.read_bytes()
    key.chmod(0o644)
    assert at.ensure_key() == key
    assert key.read_bytes() == before
    assert stat.S_IMODE(key.stat().st_mode) == 0o600


def test_signature_check_is_real(config_home: Path) -> None:
    from adb_shell.auth.sign_pythonrsa import PythonRSASigner

    key = at.ensure_key()
    signer = PythonRSASigner.FromRSAKeyPath(str(key))
    pub = parse_android_pubkey(Path(str(key) + ".pub").read_bytes())
    token = os.urandom(20)
    sig = signer.Sign(token)
    assert verify_signature(pub, token, sig)
    assert not verify_signature(pub, os.urandom(20), sig)
    other = at.ensure_key(config_home / "other")
    other_pub = parse_android_pubkey(Path(str(other) + ".pub").read_bytes())
    assert not verify_signature(other_pub, token, sig)


def test_connect_shell_push_pull_and_known_key(tmp_path: Path, config_home: Path) -> None:
    with AdbDaemon(tmp_path / "phone") as d:
        assert d.port >= 20000
        conn = at.AdbConnection(d.serial, connect_timeout_s=5, auth_timeout_s=5)
        conn.connect()  # unknown key: RSAPUBLICKEY, accepted without a prompt
        assert len(d.known_keys()) == 1
        out, rc = conn.shell("echo hi; getprop ro.product.model; exit 3")
        assert (out, rc) == ("hi\nAdbdTest\n", 3)
        local = tmp_path / "blob.bin"
        payload = os.urandom(300_000)  # several sync DATA chunks
        local.write_bytes(payload)
        conn.push(local, "/data/local/tmp/x/blob.bin", mode=0o755)
        assert (d.tmp_dir / "x" / "blob.bin").read_bytes() == payload
        assert os.access(d.tmp_dir / "x" / "blob.bin", os.X_OK)
        conn.pull("/data/local/tmp/x/blob.bin", tmp_path / "back.bin")
        assert (tmp_path / "back.bin").read_bytes() == payload
        conn.close()
        # Second connection: the key is known now, so the signature path is taken.
        conn.connect()
        assert conn.check("echo again") == "again\n"
        conn.close()
        assert len(d.known_keys()) == 1


def test_unauthorized_says_to_accept_the_key(tmp_path: Path, config_home: Path) -> None:
    with AdbDaemon(tmp_path / "phone", faults=Faults(unauthorized=True)) as d:
        conn = at.AdbConnection(d.serial, connect_timeout_s=5, auth_timeout_s=0.5)
        with pytest.raises(DeviceError, match=r"unauthorized.*accept") as info:
            conn.connect()
    key_text = (config_home / "compofa-bench" / "adbkey").read_text()
    body = "".join(key_text.splitlines()[1:-1])
    assert body[:40] not in str(info.value)


def test_offline_device(tmp_path: Path, config_home: Path) -> None:
    with AdbDaemon(tmp_path / "phone", faults=Faults(offline=True)) as d:
        conn = at.AdbConnection(d.serial, connect_timeout_s=2, auth_timeout_s=1)
        with pytest.raises(DeviceError, match="offline"):
            conn.connect()


def test_nothing_listening(config_home: Path) -> None:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    conn = at.AdbConnection(f"127.0.0.1:{port}", connect_timeout_s=2)
    with pytest.raises(DeviceError, match="offline or unreachable"):
        conn.connect()


def test_full_storage_on_push(tmp_path: Path, config_home: Path) -> None:
    with AdbDaemon(tmp_path / "phone", faults=Faults(storage_full=True)) as d:
        conn = at.AdbConnection(d.serial, connect_timeout_s=5)
        local = tmp_path / "m.tflite"
        local.write_bytes(b"x" * 1000)
        with pytest.raises(DeviceError, match="storage is full"):
            conn.push(local, "/data/local/tmp/m.tflite")
        assert not (d.tmp_dir / "m.tflite").exists()
        # The connection is still usable after a failed push.
        assert conn.check("echo ok") == "ok\n"
        conn.close()


def test_drop_mid_command_is_a_disconnect(tmp_path: Path, config_home: Path) -> None:
    with AdbDaemon(tmp_path / "phone", faults=Faults(drop_on="sleep", drop_times=1)) as d:
        conn = at.AdbConnection(d.serial, connect_timeout_s=5)
        conn.connect()
        with pytest.raises(at.AdbDisconnected):
            conn.shell("sleep 5; echo late", timeout_s=20)
        assert d.drops == 1
        # Reconnects on the next command (drop_times=1: the phone is back).
        assert conn.check("echo back") == "back\n"
        conn.close()


def test_shell_quoting_round_trips(tmp_path: Path, config_home: Path) -> None:
    nasty = ["a b", "it's", '"q"', "$(echo pwned)", "; rm -rf /", "*"]
    with AdbDaemon(tmp_path / "phone") as d:
        conn = at.AdbConnection(d.serial, connect_timeout_s=5)
        out = conn.check(at.quote_command(["printf", "%s\\n", *nasty]))
        assert out.splitlines() == nasty
        conn.close()


@pytest.mark.skipif(shutil.which("adb") is None, reason="the adb client is not installed")
def test_stock_adb_client_talks_to_the_daemon(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    # A private ADB server port (not 5037) and HOME, so no real server or key is touched.
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    server_port = s.getsockname()[1]
    s.close()
    env = {**os.environ, "HOME": str(home), "ANDROID_SDK_HOME": str(home)}

    def adb(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["adb", "-P", str(server_port), *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    with AdbDaemon(tmp_path / "phone") as d:
        try:
            adb("start-server")
            adb("connect", d.serial)
            from adbd import wait_for

            assert wait_for(lambda: f"{d.serial}\tdevice" in adb("devices").stdout, 15)
            r = adb("-s", d.serial, "shell", "echo hello from; getprop ro.product.model")
            assert r.stdout == "hello from\nAdbdTest\n"
            up = tmp_path / "up.txt"
            up.write_text("payload\n" * 5000)
            r = adb("-s", d.serial, "push", str(up), "/data/local/tmp/up.txt")
            assert r.returncode == 0, r.stderr
            assert (d.tmp_dir / "up.txt").read_text() == up.read_text()
            r = adb("-s", d.serial, "pull", "/data/local/tmp/up.txt", str(tmp_path / "down.txt"))
            assert r.returncode == 0, r.stderr
            assert (tmp_path / "down.txt").read_text() == up.read_text()
            # adb authenticated with its own (HOME) key through RSAPUBLICKEY.
            assert len(d.known_keys()) == 1
        finally:
            adb("kill-server")


def test_usb_serial_without_libusb_names_the_extra(config_home: Path) -> None:
    try:
        import usb1  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("libusb1 is installed: this checks the message when it is not")
    from compofa_bench.errors import MissingDependencyError

    with pytest.raises(MissingDependencyError, match=r"compofa-bench\[android-usb\]"):
        at.AdbConnection("R58M123ABC").connect()
