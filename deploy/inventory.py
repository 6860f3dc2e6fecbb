"""Loading and validating an inventory before any host is touched.

The inventory is an ordinary pyinfra inventory file (plain Python: groups are lists of
`(name, data)`), loaded with pyinfra's own loader so that `hardkit deploy`, `hardkit verify`
and a bare `pyinfra` run all see the same hosts and data. Validation checks every key of
every host against what the roles declare (`roles.ROLE_MODULES[*].KEYS`) and reports every
problem at once.
"""

from __future__ import annotations

import importlib
import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

from roles import ROLE_MODULES
from roles.data import DataKey, is_dict, is_existing_file, is_port, one_of

def _check_forwards(v) -> str | None:
    if not isinstance(v, dict) or not v or any(is_port(k) or is_port(p) for k, p in v.items()):
        return f"must map sshd ports to controller-side ports, e.g. {{22: 40022}}, not {v!r}"
    return None


#: pyinfra connection keys an inventory may set (others would silently change how we connect).
CONNECTOR_KEYS = {
    "ssh_hostname": DataKey("ssh_hostname", None, "Address or DNS name to connect to.", required=True),
    "ssh_port": DataKey("ssh_port", None, "Port to connect to when it differs from sshd_port (e.g. one NAT "
                        "forward). Leave it out normally: hardkit connects to sshd_port, or 22 before a move.",
                        is_port),
    "ssh_forwarded_ports": DataKey("ssh_forwarded_ports", None,
                                   "Only for hosts reached through port forwards (NAT, the lab): {sshd port: "
                                   "controller-side port}, e.g. {22: 40022, 2222: 42222}; makes SSH port moves work "
                                   "behind forwards.", _check_forwards),
    "ssh_user": DataKey("ssh_user", None, "Set by hardkit per run (bootstrap user or admin); do not set.",
                        lambda v: "is chosen by hardkit (bootstrap_user first, admin_user afterwards); remove it"),
    "ssh_key": DataKey("ssh_key", None, "Private key the controller authenticates with.", is_existing_file,
                       required=True),
    "ssh_known_hosts_file": DataKey("ssh_known_hosts_file", None, "known_hosts file holding the host's keys.",
                                    is_existing_file),
    "ssh_strict_host_key_checking": DataKey("ssh_strict_host_key_checking", "yes",
                                            "Refuse unknown or changed host keys.", one_of("yes", "accept-new")),
}

#: Keys the local lab adds for its own tests; roles never read them.
LAB_KEY = DataKey("lab", None, "Lab metadata (namespaces, addresses); read only by the lab's tests.", is_dict)


def declared_keys() -> dict[str, DataKey]:
    keys = dict(CONNECTOR_KEYS)
    keys[LAB_KEY.name] = LAB_KEY
    for mod_name in ROLE_MODULES:
        for key in getattr(importlib.import_module(mod_name), "KEYS", []):
            keys[key.name] = key
    return keys


def host_problems(data: dict) -> list[str]:
    """Problems of a host's keys taken together: each role module may define `host_problems(data)`."""
    found = []
    for mod_name in ROLE_MODULES:
        check = getattr(importlib.import_module(mod_name), "host_problems", None)
        if check is not None:
            found += check(data)
    return found


@dataclass
class Host:
    name: str
    groups: list[str]
    data: dict

    def get(self, key: DataKey):
        return key.value(self.data)


@dataclass
class Inventory:
    path: Path
    hosts: list[Host] = field(default_factory=list)

    def limit(self, selector: str | None) -> list[Host]:
        if not selector:
            return list(self.hosts)
        wanted = [s.strip() for s in selector.split(",") if s.strip()]
        chosen = [h for h in self.hosts if h.name in wanted or set(wanted) & set(h.groups)]
        unknown = [w for w in wanted if not any(w == h.name or w in h.groups for h in self.hosts)]
        if unknown:
            raise InventoryError(self.path, [f"--limit: no host or group named {u!r}" for u in unknown])
        return chosen


class InventoryError(Exception):
    def __init__(self, path: Path, problems: list[str]):
        self.path = path
        self.problems = problems
        super().__init__(self.render())

    def render(self) -> str:
        lines = [f"inventory {self.path} has {len(self.problems)} problem(s):"]
        lines += [f"  - {p}" for p in self.problems]
        return "\n".join(lines)


def load(path: str | Path) -> Inventory:
    """Load with pyinfra's loader, then validate; raise InventoryError listing every problem."""
    path = Path(path)
    if not path.is_file():
        raise InventoryError(path, [f"no such file: {path}"])
    try:
        groups = _pyinfra_groups(path)
    except Exception as e:  # a syntax error or exception in the operator's Python file
        raise InventoryError(path, [f"cannot be loaded: {type(e).__name__}: {e}"]) from None
    inv = Inventory(path)
    by_name: dict[str, Host] = {}
    for group, entries in groups.items():
        for name, data in entries:
            if name in by_name:
                if by_name[name].data != data:
                    raise InventoryError(path, [f"host {name!r} appears twice with different data"])
                by_name[name].groups.append(group)
                continue
            by_name[name] = Host(name, [group], dict(data))
    inv.hosts = list(by_name.values())
    problems = validate(inv)
    if problems:
        raise InventoryError(path, problems)
    return inv


def _pyinfra_groups(path: Path) -> dict[str, list[tuple[str, dict]]]:
    """Groups by pyinfra's rule: module-level lists (or (hosts, data) tuples) of names or (name, data)."""
    import runpy

    attrs = runpy.run_path(str(path))
    groups = {}
    for group, value in attrs.items():
        if group.startswith("_") or not isinstance(value, (list, tuple)):
            continue
        hosts, group_data = value if _is_hosts_with_data(value) else (value, {})
        if not all(isinstance(i, str) or (isinstance(i, tuple) and len(i) == 2 and isinstance(i[0], str)
                                          and isinstance(i[1], dict)) for i in hosts):
            continue  # pyinfra ignores such variables too
        entries = []
        for item in hosts:
            name, data = item if isinstance(item, tuple) else (item, {})
            entries.append((name, {**group_data, **data}))
        groups[group] = entries
    return groups


def _is_hosts_with_data(value) -> bool:
    return isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], list) and isinstance(value[1], dict)


def validate(inv: Inventory) -> list[str]:
    keys = declared_keys()
    problems: list[str] = []
    if not inv.hosts:
        problems.append("defines no hosts (a group is a module-level list of (name, data) tuples)")
    for h in inv.hosts:
        before = len(problems)
        for key_name, value in h.data.items():
            if key_name.startswith("_"):
                continue  # pyinfra's own per-host arguments (e.g. _sudo) are pyinfra's business
            key = keys.get(key_name)
            if key is None:
                hint = _closest(key_name, keys)
                problems.append(f"{h.name}: unknown key {key_name!r}" + (f" (did you mean {hint!r}?)" if hint else ""))
                continue
            err = key.check(value)
            if err:  # a check may name several problems, one a line
                problems += [f"{h.name}: {key_name} {line}" for line in err.splitlines()]
        for key in keys.values():
            if key.required and h.data.get(key.name) is None:
                problems.append(f"{h.name}: missing required key {key.name!r} ({key.doc})")
        if h.data.get("ssh_port") is not None and h.data.get("ssh_forwarded_ports") is not None:
            problems.append(f"{h.name}: set ssh_port or ssh_forwarded_ports, not both")
        if len(problems) == before:  # the keys are sound: check how they fit together
            problems += [f"{h.name}: {p}" for p in host_problems(h.data)]
        host_addr = h.data.get("ssh_hostname")
        if host_addr is not None and not _valid_host(host_addr):
            problems.append(f"{h.name}: ssh_hostname {host_addr!r} is not an IP address or DNS name")
    return problems


def _valid_host(value) -> bool:
    import re

    if not isinstance(value, str) or not value:
        return False
    try:
        ipaddress.ip_address(value)
        return True
    except ValueError:
        pass
    if re.fullmatch(r"[0-9.]+", value):
        return False  # looks like an IPv4 address but is not one
    return bool(re.fullmatch(r"(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*"
                             r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?", value))


def _closest(name: str, keys: dict) -> str | None:
    import difflib

    match = difflib.get_close_matches(name, list(keys), n=1, cutoff=0.75)
    return match[0] if match else None
