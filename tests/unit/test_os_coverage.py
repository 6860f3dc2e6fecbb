"""Every dev-sec linux-baseline control is covered by a compliance check or a justified waiver,
and the OS roles never leave a file's mode to the session umask."""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import tests.compliance
from deploy.waivers import load_waivers

#: dev-sec linux-baseline's control ids (os_spec, package_spec, sysctl_spec; package-04 is
#: reserved). The union of the ids across its releases: sysctl-18 (IPv6 off) and -34/-35
#: (protected links, Yama) are in some releases only; covering all of them covers any 59.
LINUX_BASELINE = (
    ["os-01", "os-02", "os-03", "os-03b", "os-04", "os-05", "os-05b", "os-06", "os-07", "os-08", "os-09",
     "os-10", "os-11", "os-12", "os-13", "os-14", "os-15", "os-16"]
    + ["package-01", "package-02", "package-03", "package-05", "package-06", "package-07", "package-08",
       "package-09"]
    + [f"sysctl-{n:02d}" for n in range(1, 31)] + ["sysctl-31a", "sysctl-31b", "sysctl-32", "sysctl-33",
                                                   "sysctl-34", "sysctl-35"]
)
OS_ROLES = ["updates", "kernel", "accounts", "filesystem", "audit", "time_logs"]
ROOT = Path(__file__).resolve().parents[2]


def compliance_controls() -> dict[str, str]:
    """control id -> first check function that carries it."""
    found = {}
    for info in pkgutil.iter_modules(tests.compliance.__path__):
        if not info.name.startswith("test_"):
            continue
        mod = importlib.import_module(f"tests.compliance.{info.name}")
        for name, obj in vars(mod).items():
            for mark in getattr(obj, "pytestmark", []) if name.startswith("test_") else []:
                if mark.name == "control":
                    found.setdefault(mark.args[0], f"{info.name}.{name}")
    return found


def test_every_linux_baseline_control_is_checked_or_waived():
    controls, waivers = compliance_controls(), load_waivers()
    missing = [c for c in LINUX_BASELINE if c not in controls and c not in waivers]
    assert not missing, f"linux-baseline controls with neither a check nor a waiver: {missing}"
    assert len(set(LINUX_BASELINE)) >= 59


def test_waivers_have_reasons_and_name_known_controls():
    controls = compliance_controls()
    for cid, waiver in load_waivers().items():
        assert len(waiver.reason) > 40, f"{cid}: a waiver needs a real reason"
        assert cid in controls, f"{cid} is waived but no check carries it (the report would not show it)"


def test_every_check_has_a_title():
    for info in pkgutil.iter_modules(tests.compliance.__path__):
        if info.name.startswith("test_os"):
            mod = importlib.import_module(f"tests.compliance.{info.name}")
            for name, obj in vars(mod).items():
                if name.startswith("test_") and callable(obj):
                    assert (obj.__doc__ or "").strip(), f"{info.name}.{name} has no docstring title"


def test_os_roles_always_give_a_mode():
    """A file written without a mode gets the session's umask (027 after this role): unreadable for services."""
    writers = {"install_file", "put", "template", "directory"}
    offenders = []
    for role in OS_ROLES:
        tree = ast.parse((ROOT / "roles" / f"{role}.py").read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                fn = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
                if fn in writers and not any(k.arg == "mode" for k in node.keywords):
                    offenders.append(f"roles/{role}.py:{node.lineno} {fn}()")
    assert not offenders, offenders


def test_os_roles_are_applied_after_the_access_roles():
    from roles import ROLE_MODULES

    mine = [f"roles.{r}" for r in OS_ROLES]
    assert all(m in ROLE_MODULES for m in mine)
    positions = [ROLE_MODULES.index(m) for m in mine]
    assert positions == sorted(positions) and positions[0] > ROLE_MODULES.index("roles.baseline")
    assert ROLE_MODULES.index("roles.filesystem") < ROLE_MODULES.index("roles.audit"), \
        "audit rules list the SUID programs left after the filesystem role strips bits"
