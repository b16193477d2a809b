"""iotdtls-provision and iotdtls-gateway check/spool as processes: one line per error, keys never printed, secret
files 0600."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from iotdtls.keys import fingerprint, generate_private_key, ni_uri, public_key_pem, spki_der

PROVISION = [sys.executable, "-m", "iotdtls_gateway.cli.provision"]
GATEWAY = [sys.executable, "-m", "iotdtls_gateway"]


def run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text('data_dir = "data"\n[coaps]\nbind = "127.0.0.1:5684"\n')
    return path


def test_add_writes_the_device_config_0600_and_prints_no_key(config: Path, tmp_path: Path) -> None:
    out = tmp_path / "dev.json"
    r = run([*PROVISION, "--config", str(config), "add", "sensor-1", "--device-config", str(out)])
    assert r.returncode == 0, r.stderr
    cfg = json.loads(out.read_text())
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert cfg["identity"] == "sensor-1" and cfg["host"] == "127.0.0.1" and cfg["port"] == 5684
    assert len(bytes.fromhex(cfg["psk"])) == 16 and cfg["path"] == "telemetry"
    assert cfg["psk"] not in r.stdout + r.stderr
    assert r.stdout.strip() == f"added sensor-1: psk identity sensor-1; config for the device in {out} (0600)"
    registry = tmp_path / "data" / "registry.sqlite3"
    assert stat.S_IMODE(registry.stat().st_mode) == 0o600
    for cmd in (["list"], ["list", "--json"], ["show", "sensor-1"]):
        shown = run([*PROVISION, "--config", str(config), *cmd])
        assert shown.returncode == 0 and "sensor-1" in shown.stdout and cfg["psk"] not in shown.stdout


def test_list_show_revoke(config: Path) -> None:
    for device in ("a", "b"):
        assert run([*PROVISION, "--config", str(config), "add", device]).returncode == 0
    r = run([*PROVISION, "--config", str(config), "revoke", "a"])
    assert r.returncode == 0 and r.stdout.startswith("revoked a")
    listed = [json.loads(line) for line in run([*PROVISION, "--config", str(config), "list", "--json"]).stdout
              .splitlines()]
    assert [(d["device"], d["state"]) for d in listed] == [("a", "revoked"), ("b", "enabled")]
    shown = json.loads(run([*PROVISION, "--config", str(config), "show", "b"]).stdout)
    assert shown["credentials"] == [{"kind": "psk", "identity": "b", "not_before": None, "not_after": None}]


def test_raw_public_key_device(config: Path, tmp_path: Path) -> None:
    key = generate_private_key(b"\x07" * 48)
    pub = tmp_path / "dev.pub"
    pub.write_bytes(public_key_pem(key))
    r = run([*PROVISION, "--config", str(config), "add", "rpk-1", "--key", str(pub)])
    assert r.returncode == 0 and ni_uri(fingerprint(spki_der(key))) in r.stdout
    r = run([*PROVISION, "--config", str(config), "add", "rpk-2", "--key", ni_uri(fingerprint(spki_der(key)))])
    assert r.returncode == 2 and "belongs to another device" in r.stderr


@pytest.mark.parametrize(("argv", "message"), [
    (["add", "bad name"], "bad device id 'bad name'"),
    (["add", "x", "--psk-identity", "a:b"], "bad PSK identity"),
    (["show", "nobody"], "no device 'nobody'"),
    (["revoke", "nobody"], "no device 'nobody'"),
    (["add", "y", "--key", "ni:///sha-256;short"], "bad public key"),
])
def test_errors_are_one_line_and_exit_2(config: Path, argv: list[str], message: str) -> None:
    r = run([*PROVISION, "--config", str(config), *argv])
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1 and message in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_duplicate_device(config: Path) -> None:
    assert run([*PROVISION, "--config", str(config), "add", "a"]).returncode == 0
    r = run([*PROVISION, "--config", str(config), "add", "a"])
    assert r.returncode == 2 and r.stderr.strip() == "iotdtls-provision: device 'a' exists already"


def test_device_config_needs_a_host_when_the_gateway_binds_a_wildcard(tmp_path: Path) -> None:
    config = tmp_path / "g.toml"
    config.write_text('data_dir = "data"\n[coaps]\nbind = "0.0.0.0:5684"\n')
    r = run([*PROVISION, "--config", str(config), "add", "a", "--device-config", str(tmp_path / "a.json")])
    assert r.returncode == 2 and "--host" in r.stderr


def test_check_reports_every_problem_by_file_and_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('data_dir = 5\ncolour = "blue"\n[coaps]\nbind = "nohost"\nmtu = 10\n'
                   '[mqtt]\nurl = "http://x"\ntopic = "d/{dev}"\n[log]\nformat = "xml"\n')
    r = run([*GATEWAY, "check", "--config", str(bad)])
    assert r.returncode == 2 and "Traceback" not in r.stderr
    lines = r.stderr.splitlines()
    for key in ("data_dir", "colour", "coaps.bind", "coaps.mtu", "mqtt.url", "mqtt.topic", "log.format"):
        assert any(line.startswith(f"iotdtls-gateway: {bad}: {key}: ") for line in lines), (key, lines)
    assert len(lines) == 7
    example = Path(__file__).resolve().parent.parent / "gateway" / "gateway.example.toml"
    assert run([*GATEWAY, "check", "--config", str(example)]).returncode == 0
    missing = run([*GATEWAY, "check", "--config", str(tmp_path / "none.toml")])
    assert missing.returncode == 2 and "cannot read" in missing.stderr


def test_demo_runs_as_the_readme_says() -> None:
    """The README's first command ends in ``python3 -m iotdtls_gateway demo``: it must work as written."""
    r = subprocess.run([*GATEWAY, "demo", "--devices", "2", "--readings", "2"], capture_output=True, text=True,
                       timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "readings acknowledged (2.04): 4 of 4" in r.stdout and "readings committed: 4" in r.stdout
    assert '"device":"sensor-1"' in r.stdout and "Traceback" not in r.stdout + r.stderr
    bad = subprocess.run([*GATEWAY, "demo", "--loss", "1.5"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and len(bad.stderr.splitlines()) == 1
