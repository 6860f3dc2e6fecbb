"""`hardkit secrets`: age files the real `age` binary reads, values never echoed, plaintext never on disk.

Every test drives the real CLI in a subprocess, with its secrets folder and identity in tmp_path.
"""

from __future__ import annotations

import json
import os
import pty
import select
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


class Kit:
    """The CLI with a private secrets folder, identity and HOME."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.root = tmp / "secrets"
        self.identity = tmp / "home" / ".config" / "hardkit" / "age-identity.txt"
        self.env = {**os.environ, "HOME": str(tmp / "home"), "HARDKIT_SECRETS_DIR": str(self.root)}
        self.env.pop("HARDKIT_AGE_IDENTITY", None)

    def run(self, *args: str, value: bytes | None = None, **env) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "deploy.cli", "secrets", *args], cwd=REPO,
                              input=value if value is not None else b"", capture_output=True,
                              env={**self.env, **env}, timeout=60)

    def age_decrypt(self, name: str, identity: Path | None = None, env: str = "prod") -> subprocess.CompletedProcess:
        return subprocess.run(["age", "-d", "-i", str(identity or self.identity), str(self.root / env / f"{name}.age")],
                              capture_output=True)


def keygen(path: Path) -> str:
    """A fresh age identity made by the real age-keygen; returns its public key."""
    subprocess.run(["age-keygen", "-o", str(path)], check=True, capture_output=True)
    path.chmod(0o600)
    return subprocess.run(["age-keygen", "-y", str(path)], check=True, capture_output=True, text=True).stdout.strip()


def one_line_error(res: subprocess.CompletedProcess, *words: str) -> str:
    err = res.stderr.decode()
    assert res.returncode == 2, (res.returncode, err)
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    for w in words:
        assert w in err, (w, err)
    return err


@pytest.fixture
def kit(tmp_path):
    k = Kit(tmp_path)
    res = k.run("init", "prod")
    assert res.returncode == 0, res.stderr
    return k


def test_init_creates_a_private_identity_and_lists_its_key(kit):
    assert stat.S_IMODE(kit.identity.stat().st_mode) == 0o600
    assert stat.S_IMODE(kit.identity.parent.stat().st_mode) == 0o700
    public = subprocess.run(["age-keygen", "-y", str(kit.identity)], capture_output=True, text=True).stdout.strip()
    assert kit.run("show-recipients", "prod").stdout.decode().split() == [public]
    one_line_error(kit.run("init", "prod"), "already exists")


def test_set_reads_stdin_and_real_age_decrypts_it(kit):
    assert kit.run("set", "prod", "exchange-api-key", value=b"k3y-value\n").returncode == 0
    res = kit.age_decrypt("exchange-api-key")
    assert res.returncode == 0 and res.stdout == b"k3y-value", res  # one final newline dropped
    assert kit.run("set", "prod", "bin", value=b"a\nb\n\n").returncode == 0
    assert kit.age_decrypt("bin").stdout == b"a\nb\n"  # only one
    one_line_error(kit.run("set", "prod", "empty", value=b""), "empty value")


def test_set_on_a_terminal_asks_twice_without_echo(kit):
    pid, fd = pty.fork()
    if pid == 0:
        os.chdir(REPO)
        os.execve(sys.executable, [sys.executable, "-m", "deploy.cli", "secrets", "set", "prod", "tty-secret"],
                  kit.env)
    seen = b""
    for answer in (b"typed-Secret-42\n", b"typed-Secret-42\n"):
        seen += _read_until(fd, b": ")
        os.write(fd, answer)
    seen += _read_until(fd, b"\n", final=True)
    os.waitpid(pid, 0)
    assert b"again" in seen and b"typed-Secret-42" not in seen, seen
    assert kit.age_decrypt("tty-secret").stdout == b"typed-Secret-42"


def _read_until(fd: int, end: bytes, final: bool = False, timeout: float = 20) -> bytes:
    got, deadline = b"", time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(fd, 1024)
            except OSError:
                break
            if not chunk:
                break
            got += chunk
            if got.endswith(end) and not final:
                return got
    return got


def test_errors_are_one_line_naming_the_file(kit, tmp_path):
    kit.run("set", "prod", "api", value=b"v")
    one_line_error(kit.run("set", "staging", "api", value=b"v"), "staging", "hardkit secrets init staging")
    one_line_error(kit.run("rotate", "prod", "--identity", str(tmp_path / "none.txt")), "none.txt",
                   "no age identity")
    stranger = tmp_path / "stranger.txt"
    stranger_key = keygen(stranger)
    one_line_error(kit.run("rotate", "prod", "--identity", str(stranger)), "recipients.txt", "not a recipient",
                   f"add-recipient prod {stranger_key}")
    # Listed in recipients.txt by hand, but the file was encrypted before: an older recipient must rotate.
    with (kit.root / "prod" / "recipients.txt").open("a") as f:
        f.write(stranger_key + "\n")
    one_line_error(kit.run("rotate", "prod", "--identity", str(stranger)), "api.age", "hardkit secrets rotate prod")
    (kit.root / "prod" / "api.age").write_bytes(b"age-encryption.org/v1\ngarbage")
    one_line_error(kit.run("rotate", "prod"), "api.age", "damaged")
    loose = tmp_path / "loose.txt"
    keygen(loose)
    loose.chmod(0o644)
    one_line_error(kit.run("rotate", "prod", "--identity", str(loose)), "loose.txt", "chmod 600")
    one_line_error(kit.run("add-recipient", "prod", "age1notakey"), "not an age public key")


def test_add_recipient_and_rotate_follow_the_recipient_list(kit, tmp_path):
    kit.run("set", "prod", "api", value=b"v1")
    colleague = tmp_path / "colleague.txt"
    key = keygen(colleague)
    assert kit.age_decrypt("api", colleague).returncode != 0
    assert kit.run("add-recipient", "prod", key).returncode == 0
    assert kit.age_decrypt("api", colleague).stdout == b"v1"
    # Remove the colleague by hand, rotate: they can no longer read it, we still can.
    rec = kit.root / "prod" / "recipients.txt"
    rec.write_text(rec.read_text().replace(key + "\n", ""))
    res = kit.run("rotate", "prod")
    assert res.returncode == 0 and b"change the values" in res.stderr, res.stderr
    assert kit.age_decrypt("api", colleague).returncode != 0
    assert kit.age_decrypt("api").stdout == b"v1"


EDITOR_SCRIPT = """#!/bin/sh
# Records where and how the plaintext was handed over, then saves a new value (or fails).
python3 - "$1" <<'EOF'
import json, os, stat, sys
p = sys.argv[1]
json.dump({"path": p, "mode": stat.S_IMODE(os.stat(p).st_mode),
           "dir_mode": stat.S_IMODE(os.stat(os.path.dirname(p)).st_mode),
           "old": open(p).read()}, open(os.environ["RECORD"], "w"))
open(p + ".swp", "w").write("editor swap file")
EOF
[ "$FAIL" = 1 ] && exit 3
printf 'edited-value\\n' > "$1"
"""


@pytest.fixture
def editor(tmp_path):
    path = tmp_path / "editor.sh"
    path.write_text(EDITOR_SCRIPT)
    path.chmod(0o700)
    return path


@pytest.mark.parametrize("runtime_dir", [None, "xdg"])
def test_edit_uses_a_private_memory_folder_and_removes_it(kit, editor, tmp_path, runtime_dir):
    env = {"EDITOR": str(editor), "RECORD": str(tmp_path / "record.json"), "VISUAL": ""}
    if runtime_dir:
        xdg = Path("/dev/shm") / f"sx-xdg-{os.getpid()}"
        xdg.mkdir(mode=0o700, exist_ok=True)
        env["XDG_RUNTIME_DIR"] = str(xdg)
    else:
        env["XDG_RUNTIME_DIR"] = str(tmp_path)  # on disk: must not be used
    kit.run("set", "prod", "api", value=b"old-value")
    res = kit.run("edit", "prod", "api", **env)
    assert res.returncode == 0, res.stderr
    seen = json.loads((tmp_path / "record.json").read_text())
    folder = Path(seen["path"]).parent
    assert seen["old"] == "old-value" and seen["mode"] == 0o600 and seen["dir_mode"] == 0o700
    assert folder.parent == (Path(env["XDG_RUNTIME_DIR"]) if runtime_dir else Path("/dev/shm"))
    assert not folder.exists(), "the plaintext folder (and the editor's swap file) must be gone"
    assert kit.age_decrypt("api").stdout == b"edited-value"
    # A failing editor: the value stays, the plaintext still goes.
    res = kit.run("edit", "prod", "api", FAIL="1", **env)
    one_line_error(res, "left unchanged")
    assert not Path(json.loads((tmp_path / "record.json").read_text())["path"]).parent.exists()
    assert kit.age_decrypt("api").stdout == b"edited-value"
    if runtime_dir:
        Path(env["XDG_RUNTIME_DIR"]).rmdir()  # empty again: nothing left behind


def test_edit_with_vim_leaves_no_viminfo_or_swap_file(kit, tmp_path):
    """vim keeps deleted text (the old value) in ~/.viminfo and the buffer in a swap file unless told not to."""
    kit.run("set", "prod", "api", value=b"old-Secret-7")
    env = {**kit.env, "EDITOR": "vim", "VISUAL": "", "TERM": "xterm"}
    pid, fd = pty.fork()
    if pid == 0:
        os.chdir(REPO)
        os.execve(sys.executable, [sys.executable, "-m", "deploy.cli", "secrets", "edit", "prod", "api"], env)
    time.sleep(1.5)
    os.write(fd, b"ddinew-Secret-8\x1b:wq\r")
    _read_until(fd, b"\n", final=True, timeout=10)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert kit.age_decrypt("api").stdout == b"new-Secret-8"
    home = Path(kit.env["HOME"])
    left = [p for p in home.rglob("*") if p.is_file() and b"Secret" in p.read_bytes()]
    assert left == [] and not (home / ".viminfo").exists(), left
