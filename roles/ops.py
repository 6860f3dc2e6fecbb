"""Operations and facts the OS-baseline roles share: validated file installs and host probes.

pyinfra's `files.put`/`files.template` write the destination in place and have no `validate=`:
a config that fails its validator would already be live. `install_file` stages the content
beside hardkit's own state, runs the validator on the staged copy, sets owner and mode on it,
and only then renames it over the destination. It is idempotent through the same facts pyinfra
uses (content digest, owner, group, mode): an unchanged file yields no command.

Templates are rendered on the controller (`render`) with StrictUndefined, so a missing value
is an error before any host is touched.
"""

from __future__ import annotations

import hashlib
import posixpath
import shlex
from collections import defaultdict
from functools import lru_cache
from io import BytesIO
from pathlib import Path

from pyinfra import host
from pyinfra.api import FactBase, FileUploadCommand, operation
from pyinfra.facts.files import File, Sha1File

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
#: Where staged copies wait for their validator (on the root file system, beside /etc, so the
#: final rename is atomic for files under /etc).
STAGING_DIR = "/etc/hardkit/staging"
#: host name -> {path: SHA-256 of the content the roles install there}, filled as the installing
#: operations run; roles/record.py writes it into the deploy record.
MANAGED_FILES: dict[str, dict[str, str]] = defaultdict(dict)


def note_managed(path: str, content: bytes) -> None:
    """Record that this run installs `content` at `path` on the current host."""
    MANAGED_FILES[host.name][path] = hashlib.sha256(content).hexdigest()


@lru_cache(maxsize=1)
def _env():
    import jinja2

    return jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), undefined=jinja2.StrictUndefined,
                              keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True)


def render(name: str, **context) -> str:
    """Render `templates/<name>` with `context` (undefined names are errors)."""
    return _env().get_template(name).render(**context)


def _mode_int(mode: str) -> int:
    """pyinfra's File fact reports a mode as the integer of its octal digits (0o644 -> 644)."""
    return int(str(mode).lstrip("0") or "0")


@operation()
def install_file(content: str, dest: str, mode: str, user: str = "root", group: str = "root",
                 validate: str | None = None):
    """
    Install a file with the given content, owner and mode, validating it before it goes live.

    + content: the file's full text
    + dest: absolute path on the host
    + mode: octal permission string, e.g. "0644" (always given: a session umask of 027 must not
      decide who can read it)
    + validate: shell command run on the staged copy, ``{path}`` is replaced by its quoted path;
      a non-zero exit leaves the live file untouched and fails the operation (wrap validators
      that exit 0 on warnings with `quiet_or_fail`)

    **Example:**

    .. code:: python

        install_file(name="sysctl: network", content=text, dest="/etc/sysctl.d/60-x.conf",
                     mode="0644", validate="hardkit-sysctl-check {path}")
    """
    yield from install_commands(content, dest, mode, user, group, validate)


def install_commands(content: str, dest: str, mode: str, user: str = "root", group: str = "root",
                     validate: str | None = None):
    """The commands of `install_file`, for operations that compute the content at run time."""
    data = content.encode()
    note_managed(dest, data)
    remote = host.get_fact(File, path=dest)
    same_content = bool(remote) and host.get_fact(Sha1File, path=dest) == hashlib.sha1(data).hexdigest()
    same_meta = bool(remote) and (remote["user"], remote["group"], remote["mode"]) == (user, group, _mode_int(mode))
    if same_content and same_meta:
        host.noop(f"{dest} is up to date")
        return
    if same_content:
        yield f"chown {shlex.quote(user)}:{shlex.quote(group)} {shlex.quote(dest)} && chmod {mode} {shlex.quote(dest)}"
        return
    staged = posixpath.join(STAGING_DIR, posixpath.basename(dest))
    q_staged, q_dest = shlex.quote(staged), shlex.quote(dest)
    # An existing parent keeps its mode (install -d would reset it, e.g. a 0750 config folder).
    parent = shlex.quote(posixpath.dirname(dest))
    yield f"install -d -m 0700 -o root -g root {STAGING_DIR} && {{ [ -d {parent} ] || install -d -m 0755 {parent}; }}"
    yield FileUploadCommand(BytesIO(data), staged, remote_temp_filename=host.get_temp_filename(staged))
    # Owner and mode, validation and the rename in one command (one SSH round-trip, each a second or
    # more on a slow host): each step runs only if the one before succeeded, as separate commands did.
    steps = [f"chown {shlex.quote(user)}:{shlex.quote(group)} {q_staged} && chmod {mode} {q_staged}"]
    if validate:
        check = validate.replace("{path}", q_staged)
        steps.append(f"if ! ( {check} ); then rm -f {q_staged}; "
                     f"echo 'hardkit: {dest} failed validation, the live file was left unchanged' >&2; exit 1; fi")
    steps.append(f"mv -f {q_staged} {q_dest}")
    yield _all_or_stop(steps)


def _all_or_stop(steps: list[str]) -> str:
    """One shell command running `steps` in order, stopping at the first that fails (its exit status)."""
    return "\n".join(f"{{ {step}\n}} || exit $?" for step in steps)


def quiet_or_fail(command: str) -> str:
    """Wrap a validator that exits 0 on warnings: any output on stderr (or unredirected stdout) fails.

    The command runs in a group so that its own redirections (``>/dev/null``) apply first and only
    what is left is captured.
    """
    return f'out=$( {{ {command} ; }} 2>&1 ); rc=$?; [ -n "$out" ] && echo "$out" >&2; [ $rc -eq 0 ] && [ -z "$out" ]'


# --- facts ---------------------------------------------------------------------------------------

class Container(FactBase):
    """The container technology the host runs in (e.g. ``systemd-nspawn``, ``lxc``), or None on a VM/metal."""

    def command(self):
        return "systemd-detect-virt --container 2>/dev/null || true"

    def process(self, output):
        value = "".join(output).strip()
        return None if value in ("", "none") else value


class Lines(FactBase):
    """The non-empty output lines of a shell command (the command must not fail)."""

    def command(self, command: str):
        return command

    @staticmethod
    def default():
        return []

    def process(self, output):
        return [line for line in output if line.strip()]


def in_container() -> bool:
    return host.get_fact(Container) is not None


class MappingFact(FactBase):
    """A fact whose value is a dict (empty when the command prints nothing)."""

    @staticmethod
    def default():
        return {}


class PathModes(MappingFact):
    """Owner, group and octal mode of each existing path: ``{path: (user, group, "644")}``."""

    def command(self, paths):
        quoted = " ".join(shlex.quote(p) for p in paths)
        return f"for p in {quoted}; do [ -e \"$p\" ] && stat -c '%n|%U|%G|%a' \"$p\"; done; true"

    def process(self, output):
        result = {}
        for line in output:
            path, user, group, mode = line.rsplit("|", 3)
            result[path] = (user, group, mode)
        return result


@operation()
def ensure_modes(specs: dict[str, tuple[str, str, str]]):
    """
    Owner, group and mode for many existing paths in one fact (paths that do not exist are skipped).

    + specs: ``{path: (user, group, "0600")}``
    """
    current = host.get_fact(PathModes, paths=sorted(specs))
    wrong = []
    for path, (user, group, mode) in sorted(specs.items()):
        have = current.get(path)
        if have is None:
            continue
        if have != (user, group, format(int(mode, 8), "o")):
            wrong.append(path)
            yield (f"chown {shlex.quote(user)}:{shlex.quote(group)} {shlex.quote(path)} && "
                   f"chmod {mode} {shlex.quote(path)}")
    if not wrong:
        host.noop(f"{len(current)} paths have their owner and mode")
