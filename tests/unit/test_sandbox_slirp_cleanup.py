"""A target whose network fails half-way still names its slirp4netns in its saved state, so `down` stops it.

Seen on a loaded machine: slirp4netns started, then its API refused a port forward; the state saved before
it lacked the process, and `sandbox down` left it running."""
from __future__ import annotations

import os
import shutil

import pytest

from sandbox import network, nspawn
from sandbox.errors import LabError
from sandbox.target import Target, load, pid_alive


def test_a_failed_network_start_leaves_its_slirp_for_down_to_stop(tmp_path, monkeypatch):
    if os.geteuid() != 0 or not shutil.which("slirp4netns"):
        pytest.skip("needs root and slirp4netns (as the nspawn tier does)")
    monkeypatch.setenv("HARDKIT_LAB_DIR", str(tmp_path))
    t = Target(name="slirpleak-1", prefix="slirpleak", index=1, tier="nspawn", ssh_port=0,
               netns=f"{network.ns_tag()}-slirpleak-1", lab_v4="", lab_v6="")
    t.dir.mkdir(parents=True)
    net = network.LabNet("slirpleak")

    def refuse(sock, request):
        raise LabError("slirp4netns refused add_hostfwd (injected)")

    monkeypatch.setattr(nspawn, "_slirp_api", refuse)
    try:
        with pytest.raises(LabError):
            nspawn._start_network(t, net)
        saved = load("slirpleak", "slirpleak-1")
        pid = t.pids.get("slirp4netns", 0)
        assert pid and saved and saved.pids.get("slirp4netns") == pid, \
            f"the saved state does not name the slirp4netns started ({pid}): {saved}"
        nspawn.destroy(saved, net)
        assert not pid_alive(pid) and not network.netns_exists(t.netns)
    finally:
        if t.pids.get("slirp4netns") and pid_alive(t.pids["slirp4netns"]):
            os.kill(t.pids["slirp4netns"], 9)
        if network.netns_exists(t.netns):
            network.run(["ip", "netns", "del", t.netns], check=False)
