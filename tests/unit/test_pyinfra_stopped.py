"""deploy/runner.py pyinfra_stopped: the summary's first error for a host pyinfra stopped on carries the
operation and what pyinfra said there, not its status lines (a landing's CI summary read
"pyinfra stopped: No changes / No changes / No changes / ... Overwrite (y/n)?")."""

from __future__ import annotations

from deploy.runner import pyinfra_stopped

#: The tail of a real run (the landing's fleet-interrupt failure), two hosts' lines interleaved.
TAIL = """\
--> Starting operation: Admin access | sudoers rule for the admin (checked with visudo)
    [flint-1] No changes
    [flint-2] No changes
--> Starting operation: Second factor for people | SSH group: the admin and the people
    [flint-1] No changes
    [flint-2] Success
--> Starting operation: SSH | RSA host key of at least 4096 bits
    [flint-2] Changed
    [flint-1] /etc/ssh/ssh_host_rsa_key.hardkit-new already exists.
    [flint-1] Overwrite (y/n)?
    [flint-1] Error: executed 1 commands

--> Disconnecting from hosts...
--> pyinfra error: No hosts remaining!
""".splitlines()


def test_names_the_operation_and_what_the_host_said_there():
    assert pyinfra_stopped(TAIL, "flint-1") == (
        "pyinfra stopped at 'SSH | RSA host key of at least 4096 bits': "
        "/etc/ssh/ssh_host_rsa_key.hardkit-new already exists. / Overwrite (y/n)? / Error: executed 1 commands")


def test_status_lines_alone_point_to_the_output():
    assert pyinfra_stopped(TAIL, "flint-2") == "pyinfra stopped: see its output"
    assert pyinfra_stopped(["    [h] Connected"], "h") == "pyinfra stopped: see its output"


def test_a_host_named_like_the_start_of_another_is_not_mixed_up():
    tail = ["--> Starting operation: A", "    [web-1] Error: boom", "    [web-10] Error: other"]
    assert pyinfra_stopped(tail, "web-1") == "pyinfra stopped at 'A': Error: boom"


def test_lines_before_any_operation_are_kept_without_one():
    tail = ["    [h] Could not connect (timed out)"]
    assert pyinfra_stopped(tail, "h") == "pyinfra stopped: Could not connect (timed out)"
