"""sandbox/target_cpu.py: a target's CPU read from its own cpuacct group, its network helper's from /proc."""

from __future__ import annotations

import os

from sandbox import target_cpu
from sandbox.target import Target


def _target(tmp_path, monkeypatch, **pids) -> Target:
    monkeypatch.setattr("sandbox.target.labs_dir", lambda: tmp_path / "labs")
    return Target(name="t-1", prefix="t", index=1, tier="nspawn", ssh_port=1, netns="n", lab_v4="", lab_v6="",
                  pids=pids)


def test_usage_is_the_groups_nanoseconds_in_seconds_and_none_without_a_group(tmp_path, monkeypatch):
    monkeypatch.setattr(target_cpu, "CPUACCT", tmp_path / "cpuacct")
    t = _target(tmp_path, monkeypatch)
    assert target_cpu.usage(t) is None
    target_cpu.group(t).mkdir(parents=True)
    (target_cpu.group(t) / "cpuacct.usage").write_text("1500000000\n")
    assert target_cpu.usage(t) == 1.5


def test_a_target_not_running_is_not_tracked(tmp_path, monkeypatch):
    monkeypatch.setattr(target_cpu, "CPUACCT", tmp_path / "cpuacct")
    (tmp_path / "cpuacct").mkdir()
    assert target_cpu.track(_target(tmp_path, monkeypatch)) is False  # no nspawn.pid


def test_network_usage_reads_user_and_system_time_of_the_process(tmp_path, monkeypatch):
    t = _target(tmp_path, monkeypatch, slirp4netns=os.getpid())
    sum(range(10 ** 6))
    seconds = target_cpu.network_usage(t)
    times = os.times()
    assert seconds is not None and 0 <= seconds <= times.user + times.system + 0.05
    assert target_cpu.network_usage(_target(tmp_path, monkeypatch)) is None
