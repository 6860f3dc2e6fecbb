"""State of a host for the OS-baseline checks, each gathered in one command and shared by every
check that needs it (over a software-CPU VM each SSH command costs seconds).

Every producer reads what is in force: the kernel's sysctl values, the mount table, systemd's
view of its units, dpkg's database, the files as they are now.
"""

from __future__ import annotations

import json
import shlex

import pytest

from roles.filesystem import MOUNT_FLAGS_COMMAND, mount_flags


def register_checks(namespace: dict, table: dict, make) -> None:
    """One check per control of `table` ({id: (title, arg)}), built by `make(id, arg)`, added to a
    test module's namespace with its control mark and its title as docstring."""
    for control, (title, arg) in table.items():
        check = make(control, arg)
        check.__doc__ = title
        check.__name__ = f"test_{control.replace('-', '_')}"
        namespace[check.__name__] = pytest.mark.control(control)(check)


def sysctl(target) -> dict[str, str]:
    """Every sysctl value in force (`sysctl -a`), whitespace-normalised."""
    def produce(t):
        out = t.host.run("sysctl -a 2>/dev/null").stdout
        values = {}
        for line in out.splitlines():
            key, sep, value = line.partition(" = ")
            if sep:
                values[key.strip()] = " ".join(value.split())
        return values
    return target.fact("os:sysctl", produce)


def mounts(target) -> dict[str, set[str]]:
    """Per-mount flags and file system options of the top-most mount at each mount point (`findmnt`)."""
    def produce(t):
        return mount_flags(t.check_output(MOUNT_FLAGS_COMMAND).splitlines())
    return target.fact("os:mounts", produce)


def packages(target) -> dict[str, str]:
    """Installed packages (dpkg status 'ii' or half-installed states) -> version."""
    def produce(t):
        out = t.check_output("dpkg-query -W -f '${db:Status-Abbrev} ${Package} ${Version}\\n'")
        return {parts[1]: parts[2] for parts in (line.split() for line in out.splitlines())
                if len(parts) == 3 and parts[0] != "un" and not parts[0].startswith(("rc", "pn"))}
    return target.fact("os:packages", produce)


def stats(target, paths: list[str]) -> dict[str, tuple[str, str, int]]:
    """Owner, group and mode (int) of each existing path, one command for all."""
    key = "os:stat:" + "|".join(sorted(paths))

    def produce(t):
        quoted = " ".join(shlex.quote(p) for p in sorted(paths))
        out = t.check_output(f"for p in {quoted}; do [ -e \"$p\" ] && stat -c '%n|%U|%G|%a' \"$p\"; done; true")
        result = {}
        for line in out.splitlines():
            path, user, group, mode = line.rsplit("|", 3)
            result[path] = (user, group, int(mode, 8))
        return result
    return target.fact(key, produce)


def texts(target, paths: list[str]) -> dict[str, str | None]:
    """The content of several text files in one command (None for a missing file)."""
    key = "os:texts:" + "|".join(sorted(paths))
    marker = "@@hardkit-file@@"

    def produce(t):
        quoted = " ".join(shlex.quote(p) for p in paths)
        out = t.check_output(f"for p in {quoted}; do echo \"{marker} $p\"; "
                             f"[ -r \"$p\" ] && cat \"$p\" || echo \"{marker}-missing\"; done")
        result, current, lines = {}, None, []
        for line in out.splitlines() + [f"{marker} END"]:
            if line.startswith(marker + " "):
                if current is not None:
                    result[current] = None if lines == [f"{marker}-missing"] else "\n".join(lines) + "\n"
                current, lines = line[len(marker) + 1:], []
            else:
                lines.append(line)
        return result
    return target.fact(key, produce)


def text(target, path: str) -> str | None:
    return texts(target, [path])[path]


def units(target, names: list[str]) -> dict[str, dict[str, str]]:
    """`systemctl show` properties of several units in one command."""
    key = "os:units:" + "|".join(sorted(names))
    props = "Id,LoadState,ActiveState,SubState,UnitFileState,Result,ConditionResult,TimersCalendar," \
            "RandomizedDelayUSec,ExecMainStatus"

    def produce(t):
        out = t.check_output(f"systemctl show -p {props} {' '.join(shlex.quote(n) for n in names)}")
        result, current = {}, {}
        for line in out.splitlines() + [""]:
            if not line.strip():
                if current.get("Id"):
                    result[current["Id"]] = current
                current = {}
                continue
            k, _, v = line.partition("=")
            current[k] = v
        for name in names:
            result.setdefault(name, {"Id": name, "LoadState": "not-found"})
        return result
    return target.fact(key, produce)


def apt_config(target) -> str:
    """apt's merged configuration (every file under apt.conf.d, as apt and unattended-upgrades read it)."""
    return target.fact("os:apt-config", lambda t: t.check_output("apt-config dump"))


def apt_values(target, name: str) -> list[str]:
    """The value(s) of one apt option: a scalar gives one item, a list its entries (in order)."""
    values = []
    for line in apt_config(target).splitlines():
        key, _, value = line.partition(" ")
        value = value.rstrip(";").strip().strip('"')
        if key == name and value:
            values.append(value)
        elif key == name + "::" and value:
            values.append(value)
    return values


def guard_status(target) -> dict:
    from roles.updates import GUARD

    return target.fact("os:guard", lambda t: json.loads(t.check_output(f"{GUARD} status --json")))


def shadow(target) -> list[list[str]]:
    return [line.split(":") for line in (text(target, "/etc/shadow") or "").splitlines() if line]


def passwd(target) -> list[list[str]]:
    return [line.split(":") for line in (text(target, "/etc/passwd") or "").splitlines() if line]


def group(target) -> list[list[str]]:
    return [line.split(":") for line in (text(target, "/etc/group") or "").splitlines() if line]


def key_values(text_: str, sep: str | None = None) -> dict[str, str]:
    """`KEY VALUE` (or `KEY = VALUE` with sep='=') lines, comments skipped; the last one wins."""
    values = {}
    for line in (text_ or "").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if sep:
            k, s, v = line.partition(sep)
            if s:
                values[k.strip()] = v.strip()
        else:
            parts = line.split(None, 1)
            if len(parts) == 2:
                values[parts[0]] = parts[1].strip()
    return values


def kernel_release(target) -> tuple[int, int]:
    rel = target.fact("os:uname", lambda t: t.check_output("uname -r").strip())
    major, minor = rel.split(".")[:2]
    return int(major), int("".join(ch for ch in minor if ch.isdigit()) or 0)
