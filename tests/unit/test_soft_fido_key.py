"""The software FIDO2 key the 2FA lab test logs in with (tests/fido/sk_soft.c) reports user
verification exactly when it happened: OpenSSH's own ssh-keygen enrols on it, signs with it, and
checks the signatures; the flags byte is read from the signature OpenSSH assembled."""

from __future__ import annotations

import base64
import subprocess

import pytest

from tests.fido import soft_key

PIN = "4711"
USER_PRESENT, USER_VERIFIED = 0x01, 0x04


def _string(buf: bytes, at: int) -> tuple[bytes, int]:
    n = int.from_bytes(buf[at:at + 4], "big")
    return buf[at + 4:at + 4 + n], at + 4 + n


def signature_flags(armored: str) -> int:
    """The authenticator flags inside an SSHSIG signature (OpenSSH PROTOCOL.sshsig and PROTOCOL.u2f)."""
    blob = base64.b64decode("".join(line for line in armored.splitlines() if not line.startswith("-----")))
    assert blob[:6] == b"SSHSIG"
    at = 10
    for _ in range(4):  # public key, namespace, reserved, hash algorithm
        _, at = _string(blob, at)
    sig, _ = _string(blob, at)
    kind, at = _string(sig, 0)
    assert kind == b"sk-ssh-ed25519@openssh.com"
    _, at = _string(sig, at)
    return sig[at]


@pytest.fixture(scope="module")
def device(tmp_path_factory):
    folder = tmp_path_factory.mktemp("softkey")
    lib = soft_key.build(folder)
    pub = soft_key.enrol(lib, folder / "id_sk", PIN)
    return lib, folder / "id_sk", pub


@pytest.fixture(scope="module")
def no_touch_device(device, tmp_path_factory):
    """The same device, another key: enrolled with `-O no-touch-required`, so it never asks for a touch."""
    lib = device[0]
    folder = tmp_path_factory.mktemp("softkey-notouch")
    pub = soft_key.enrol(lib, folder / "id_sk", PIN, touch=False)
    return lib, folder / "id_sk", pub


def sign(device, tmp_path, device_pin, typed_pin) -> subprocess.CompletedProcess:
    lib, key, _ = device
    msg = tmp_path / "msg"
    msg.write_text("login challenge stand-in\n")
    return subprocess.run(["ssh-keygen", "-Y", "sign", "-n", "file", "-f", str(key), str(msg)],
                          capture_output=True, text=True, stdin=subprocess.DEVNULL,
                          env=soft_key.env(lib, device_pin, typed_pin))


def checked_flags(device, tmp_path) -> int:
    _, _, pub = device
    sig = tmp_path / "msg.sig"
    ok = subprocess.run(["ssh-keygen", "-Y", "check-novalidate", "-n", "file", "-f", str(pub), "-s", str(sig)],
                        input=(tmp_path / "msg").read_text(), capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr  # OpenSSH accepts the signature as made by the enrolled key
    return signature_flags(sig.read_text())


def test_enrolled_key_is_a_verify_required_sk_ed25519_key(device):
    _, key, pub = device
    assert pub.read_text().split()[0] == "sk-ssh-ed25519@openssh.com"
    listing = subprocess.run(["ssh-keygen", "-l", "-f", str(key)], capture_output=True, text=True)
    assert listing.returncode == 0 and "ED25519-SK" in listing.stdout, listing


def test_right_pin_signs_with_user_verified(device, tmp_path):
    res = sign(device, tmp_path, PIN, PIN)
    assert res.returncode == 0, res.stderr
    assert checked_flags(device, tmp_path) == USER_PRESENT | USER_VERIFIED


def test_device_without_user_verification_signs_with_presence_only(device, tmp_path):
    res = sign(device, tmp_path, None, PIN)
    assert res.returncode == 0, res.stderr
    assert checked_flags(device, tmp_path) == USER_PRESENT


def test_wrong_pin_signs_nothing(device, tmp_path):
    res = sign(device, tmp_path, PIN, "0000")
    assert res.returncode != 0 and not (tmp_path / "msg.sig").exists(), res


def test_key_enrolled_without_touch_signs_without_user_presence(no_touch_device, tmp_path):
    res = sign(no_touch_device, tmp_path, PIN, PIN)
    assert res.returncode == 0, res.stderr
    assert checked_flags(no_touch_device, tmp_path) == USER_VERIFIED
