"""A software FIDO2 security key for OpenSSH (sk_soft.c), built and driven by the tests.

The lab has no USB authenticator. OpenSSH loads security-key middleware from a shared library
(SecurityKeyProvider=, `ssh-keygen -w`): the tests build sk_soft.c into one with gcc and libcrypto,
enrol an sk-ssh-ed25519 key on it with the real ssh-keygen, and log in with the real ssh client.
Whether the device verifies its user is the test's choice (`env(device_pin=...)`, see sk_soft.c).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

SOURCE = Path(__file__).with_name("sk_soft.c")
#: The environment variable holding the software device's PIN (unset: it cannot verify its user).
DEVICE_PIN = "SK_SOFT_PIN"
#: The environment variable our askpass answers the client's PIN prompt from.
TYPED_PIN = "SK_SOFT_TYPED_PIN"
#: An askpass program: answers a PIN prompt from TYPED_PIN, stays silent for a "touch your key" notice.
ASKPASS = '#!/bin/sh\n[ "$SSH_ASKPASS_PROMPT" = none ] && exit 0\nprintf \'%s\\n\' "$' + TYPED_PIN + '"\n'


def build(folder: Path) -> Path:
    """Compile the authenticator into folder/sk_soft.so (gcc and libssl-dev: scripts/setup-host.sh)."""
    lib = folder / "sk_soft.so"
    res = subprocess.run(["gcc", "-Wall", "-Wextra", "-Werror", "-shared", "-fPIC", "-o", str(lib), str(SOURCE),
                          "-lcrypto"], capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"building {SOURCE.name} failed:\n{res.stderr}")
    askpass = folder / "askpass"
    askpass.write_text(ASKPASS)
    askpass.chmod(0o700)
    return lib


def env(lib: Path, device_pin: str | None, typed_pin: str | None = None) -> dict[str, str]:
    """The environment of an ssh/ssh-keygen run: the device's PIN (None: no user verification), and
    the PIN the "person" types when OpenSSH asks (through askpass, never a terminal)."""
    out = {k: v for k, v in os.environ.items() if k not in (DEVICE_PIN, TYPED_PIN)}
    out.update(SSH_ASKPASS=str(lib.with_name("askpass")), SSH_ASKPASS_REQUIRE="force", SSH_SK_PROVIDER=str(lib))
    if device_pin is not None:
        out[DEVICE_PIN] = device_pin
    if typed_pin is not None:
        out[TYPED_PIN] = typed_pin
    return out


def ssh_options(lib: Path) -> list[str]:
    """The ssh client's option for this device: Debian's ssh ignores SSH_SK_PROVIDER (its default is the
    built-in USB middleware), ssh-keygen reads it."""
    return ["-o", f"SecurityKeyProvider={lib}"]


def enrol(lib: Path, key: Path, pin: str, comment: str = "soft-fido2", touch: bool = True) -> Path:
    """`ssh-keygen -t ed25519-sk -O verify-required` on the software device (PIN-protected); returns the .pub.
    `touch=False` adds `-O no-touch-required`: the key never asks for presence, so its signatures lack it."""
    options = ["-O", "verify-required"] + ([] if touch else ["-O", "no-touch-required"])
    res = subprocess.run(["ssh-keygen", "-q", "-t", "ed25519-sk", *options, "-w", str(lib),
                          "-N", "", "-C", comment, "-f", str(key)],
                         capture_output=True, text=True, stdin=subprocess.DEVNULL, env=env(lib, pin, pin))
    if res.returncode != 0:
        raise RuntimeError(f"ssh-keygen enrolment on the software key failed: {res.stderr}")
    return key.with_name(key.name + ".pub")
