"""testinfra over the same inventory file the deploy used: one `target` per host.

`hardkit verify INVENTORY` runs this suite with `--hardkit-inventory`. Logins are resolved the
way the deploy resolves them (admin with sudo, else the bootstrap user), and testinfra talks
to each host over OpenSSH with strict host-key checking through a generated ssh_config.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

import pytest
import testinfra

from deploy import connect, ssh_config
from deploy.inventory import load
from tests.compliance.target import Target
from deploy.waivers import WaiverError, load_waivers


def pytest_addoption(parser):
    parser.addoption("--hardkit-inventory", default=os.environ.get("HARDKIT_INVENTORY"),
                     help="inventory file whose hosts are verified")
    parser.addoption("--hardkit-limit", default=None, help="only these hosts (comma-separated names)")
    parser.addoption("--hardkit-auditors", action="store_true",
                     help="also run the external auditors (checks marked `auditor`: `hardkit audit`)")
    parser.addoption("--hardkit-keep-lynis", action="store_true",
                     help="leave Lynis installed after the audit (default: removed if the audit installed it)")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--hardkit-auditors"):
        return
    kept = [i for i in items if i.get_closest_marker("auditor") is None]
    if len(kept) != len(items):
        config.hook.pytest_deselected(items=[i for i in items if i not in kept])
        items[:] = kept


def _inventory(config):
    path = config.getoption("--hardkit-inventory")
    if not path:
        raise pytest.UsageError("compliance checks need --hardkit-inventory INVENTORY (or HARDKIT_INVENTORY)")
    if not hasattr(config, "_hardkit_inv"):
        config._hardkit_inv = load(path)
    return config._hardkit_inv


def _hosts(config):
    """The inventory's hosts this run checks (--hardkit-limit: `hardkit verify` runs one per host)."""
    hosts = _inventory(config).hosts
    limit = config.getoption("--hardkit-limit")
    return [h for h in hosts if h.name in limit.split(",")] if limit else hosts


def pytest_generate_tests(metafunc):
    if "target" in metafunc.fixturenames:
        metafunc.parametrize("target", [h.name for h in _hosts(metafunc.config)], indirect=True, scope="session")


@pytest.fixture(scope="session")
def _ssh_setup(request):
    inv = _inventory(request.config)
    hosts = _hosts(request.config)  # only these: another host's login is another run's business
    logins, errors = {}, {}
    for h in hosts:
        try:
            logins[h.name] = connect.resolve(h)
        except connect.LoginError as e:
            errors[h.name] = str(e)
    request.config.hardkit_unreachable = dict(errors)  # the report lists these hosts as unreachable (exit 3)
    tmp = Path(tempfile.mkdtemp(prefix="hardkit-verify-"))
    os.chmod(tmp, 0o700)
    cfg = tmp / "ssh_config"
    cfg.write_text(ssh_config.render(hosts, logins, tmp))
    yield inv, logins, errors, cfg
    for sock in tmp.iterdir():
        if sock.is_socket():
            subprocess.run(["ssh", "-F", str(cfg), "-O", "exit", "-o", f"ControlPath={sock}", "x"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    for f in tmp.iterdir():
        f.unlink(missing_ok=True)
    tmp.rmdir()


_targets: dict[str, Target] = {}


@pytest.fixture(scope="session")
def target(request, _ssh_setup) -> Target:
    inv, logins, errors, cfg = _ssh_setup
    name = request.param
    if name in errors:
        pytest.fail(f"cannot log in: {errors[name]}", pytrace=False)
    if name not in _targets:
        login = logins[name]
        host = testinfra.get_host(f"ssh://{name}", ssh_config=str(cfg), sudo=login.sudo, controlpersist=120)
        data = next(h for h in inv.hosts if h.name == name).data
        _targets[name] = Target(name=name, host=host, data=data, login=login)
    return _targets[name]


@pytest.fixture(autouse=True)
def _apply_waivers(request):
    marker = request.node.get_closest_marker("control")
    callspec = getattr(request.node, "callspec", None)
    if marker is None or callspec is None or "target" not in callspec.params:
        return
    waiver = _waivers(request.config).get(marker.args[0])
    if waiver and waiver.applies_to(callspec.params["target"]):
        if waiver.expired():  # the check fails in its call phase (FAIL, not a setup ERROR), without running
            request.node.hardkit_expired_waiver = (
                f"the waiver of {waiver.control} expired on {waiver.expires} (owner: {waiver.owner}); "
                f"fix the control or renew the waiver. It said: {waiver.reason}")
            return
        pytest.skip(f"waived until {waiver.expires} (owner: {waiver.owner}): {waiver.reason}")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_call(item):
    expired = getattr(item, "hardkit_expired_waiver", None)
    if expired:
        pytest.fail(expired, pytrace=False)


def _waivers(config):
    if not hasattr(config, "_hardkit_waivers"):
        try:
            config._hardkit_waivers = load_waivers()
        except WaiverError as e:
            raise pytest.UsageError(str(e)) from None
    return config._hardkit_waivers
