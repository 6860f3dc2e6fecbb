"""Editing a secret with $EDITOR without its plaintext ever reaching a disk.

The value is written to a 0600 file in a fresh 0700 folder on a memory filesystem
($XDG_RUNTIME_DIR, else /dev/shm; refused when neither is tmpfs/ramfs), the editor runs on it,
and the folder (with any swap or backup file the editor made) is removed whatever happens:
editor failure, Ctrl-C, SIGTERM or SIGHUP.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import tempfile
from contextlib import contextmanager
from pathlib import Path

from deploy.secrets_store import SecretsError

MEMORY_FS = {"tmpfs", "ramfs"}


def memory_folder_base() -> Path:
    """$XDG_RUNTIME_DIR if it is on a memory filesystem, else /dev/shm if it is."""
    for base in (os.environ.get("XDG_RUNTIME_DIR"), "/dev/shm"):
        if base and Path(base).is_dir() and filesystem_type(Path(base)) in MEMORY_FS:
            return Path(base)
    raise SecretsError("no memory filesystem to edit in ($XDG_RUNTIME_DIR and /dev/shm are missing or not tmpfs): "
                       "use `hardkit secrets set ENV NAME` with the value on stdin instead")


def filesystem_type(path: Path) -> str:
    """The type of the filesystem holding `path`, from /proc/self/mountinfo (longest mount point wins)."""
    target, best, kind = str(path.resolve()), "", ""
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            mount_point = left.split()[4].replace("\\040", " ")
            inside = target == mount_point or target.startswith(mount_point.rstrip("/") + "/")
            if inside and len(mount_point) >= len(best):
                best, kind = mount_point, right.split()[0]
    return kind


@contextmanager
def _terminations_raise():
    """SIGTERM/SIGHUP become KeyboardInterrupt for the duration, so cleanup still runs."""
    def stop(signum, frame):
        raise KeyboardInterrupt

    old = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


#: Editors that keep copies of what they edit elsewhere unless told not to: vim's swap files and its
#: ~/.viminfo (registers, i.e. yanked plaintext) — off with `-n -i NONE`.
VIM_FLAGS = ("vi", "vim", "nvim", "vim.basic", "vim.tiny", "vim.nox", "vim.gtk3"), ["-n", "-i", "NONE"]


def editor_command() -> list[str]:
    """$VISUAL, else $EDITOR, else vi; vim-family editors are kept from writing swap and viminfo files."""
    cmd = shlex.split(os.environ.get("VISUAL") or os.environ.get("EDITOR") or "vi")
    found = shutil.which(cmd[0]) if cmd else None
    names, flags = VIM_FLAGS
    if found and Path(os.path.realpath(found)).name in names and os.path.basename(cmd[0]) in names:
        cmd[1:1] = flags
    return cmd


def edit_value(label: str, value: bytes) -> bytes:
    """Let the operator edit `value` in $EDITOR; return what they saved (the plaintext file is gone then)."""
    folder = Path(tempfile.mkdtemp(prefix="hardkit-edit-", dir=memory_folder_base()))  # mkdtemp: mode 0700
    try:
        with _terminations_raise():
            path = folder / label
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(value)
            cmd = editor_command()
            try:
                rc = subprocess.run([*cmd, str(path)]).returncode
            except FileNotFoundError:
                raise SecretsError(f"editor {cmd[0]!r} not found: set $EDITOR; {label} left unchanged") from None
            if rc != 0:
                raise SecretsError(f"the editor exited with status {rc}: {label} left unchanged")
            return path.read_bytes()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
