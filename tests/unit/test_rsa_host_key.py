"""roles/ssh.py strong_rsa_host_key: a weak RSA host key is replaced by a RSA_HOST_KEY_BITS one, and a
run is not stopped by what a killed run left behind — its aside file, or its ssh-keygen still running on
the host and writing that file after this run cleaned up (the landing's fleet-interrupt test stopped at
ssh-keygen's "Overwrite (y/n)?").

Real ssh-keygen and shell, real pyinfra (its @local connector runs the command path the SSH one does), on a
key under a temporary folder.
"""

from __future__ import annotations

import subprocess

import pytest

from roles import ssh
from tests.unit.pyinfra_local import local_state, run_all


@pytest.fixture
def weak_key(tmp_path, monkeypatch):
    key = tmp_path / "ssh_host_rsa_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "rsa", "-b", "1024", "-N", "", "-f", str(key)], check=True)
    monkeypatch.setattr(ssh, "RSA_HOST_KEY", str(key))
    return key


def _bits(pub) -> int:
    return int(subprocess.run(["ssh-keygen", "-lf", str(pub)], capture_output=True, text=True,
                              check=True).stdout.split()[0])


def _run(monkeypatch, after_cleanup=None) -> bool:
    """Run the operation on @local; `after_cleanup()` runs right after its removal of leftovers (its first
    command after the fact), as a killed run's ssh-keygen finishing then would. True if the operation
    succeeded."""
    from pyinfra.api.host import Host
    from pyinfra.api.operation import add_op

    state, host = local_state()
    add_op(state, ssh.strong_rsa_host_key)
    run, cleaned = Host.run_shell_command, []

    def spy(self, command, *a, **k):
        result = run(self, command, *a, **k)
        if str(command).startswith("rm ") and not cleaned and after_cleanup:
            cleaned.append(command)
            after_cleanup()
        return result

    monkeypatch.setattr(Host, "run_shell_command", spy)
    run_all(state)
    return state.results[host].success_ops == 1 and not state.results[host].error_ops


def test_a_weak_key_is_replaced_by_a_strong_pair(weak_key, monkeypatch):
    assert _bits(f"{weak_key}.pub") == 1024
    assert _run(monkeypatch)
    assert _bits(f"{weak_key}.pub") == ssh.RSA_HOST_KEY_BITS
    # the pair matches: the public half is the private key's
    derived = subprocess.run(["ssh-keygen", "-y", "-f", str(weak_key)], capture_output=True, text=True,
                             check=True).stdout.split()[1]
    assert derived == (weak_key.parent / f"{weak_key.name}.pub").read_text().split()[1]
    assert sorted(p.name for p in weak_key.parent.iterdir()) == [weak_key.name, f"{weak_key.name}.pub"]


def test_a_killed_runs_keygen_writing_after_the_cleanup_does_not_stop_the_run(weak_key, monkeypatch):
    # What the killed run of the old code, and of this one, would have written aside.
    leftovers = [weak_key.parent / f"{weak_key.name}{ssh.RSA_ASIDE_SUFFIX}",
                 weak_key.parent / f"{weak_key.name}{ssh.RSA_ASIDE_SUFFIX}.0badc0de"]

    def orphan_writes():
        for path in leftovers:
            path.write_text("a key being written by a killed run's ssh-keygen\n")

    assert _run(monkeypatch, after_cleanup=orphan_writes)
    assert all(p.exists() for p in leftovers)  # (written after the cleanup, as the test means)
    assert _bits(f"{weak_key}.pub") == ssh.RSA_HOST_KEY_BITS
