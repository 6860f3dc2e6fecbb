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


def test_status_lines_alone_say_so_and_point_to_the_output():
    """flint-2 only said "Changed": the run's "No hosts remaining!" is a consequence, not its cause."""
    said_nothing = "pyinfra stopped and said nothing about this host (-v shows its output)"
    assert pyinfra_stopped(TAIL, "flint-2") == said_nothing
    assert pyinfra_stopped(["    [h] Connected"], "h") == said_nothing


#: The tail of a real run that stopped every host while preparing the deploy (12 fresh hosts built the
#: bot's release 12 times at once in one source tree), without -v: the summary said only "see its output".
EXCEPTION_TAIL = r"""--> Preparing operation files...
    Loading: /repo/deploy/site.py

--> Disconnecting from hosts...
--> An exception occurred in: /repo/deploy/site.py:

Traceback (most recent call last):
  File "/repo/.venv/lib/python3.11/site-packages/pyinfra_cli/util.py", line 66, in exec_file
    exec(PYTHON_CODES[filename], data)
  File "/repo/deploy/site.py", line 28, in <module>
    _apply()
  File "/repo/.venv/lib/python3.11/site-packages/pyinfra/api/deploy.py", line 93, in decorated_func
    return func(*args, **kwargs)
           ^^^^^^^^^^^^^^^^^^^^^
  File "/repo/roles/bot.py", line 266, in bot
    release = bot_release.current()
              ^^^^^^^^^^^^^^^^^^^^^
  File "/repo/roles/bot_release.py", line 110, in current
    build_wheelhouse(house)
  File "/repo/roles/bot_release.py", line 86, in build_wheelhouse
    _run(pip + ["wheel", "-q", "--no-deps", "-w", str(folder), str(BOT_SRC)],
  File "/repo/roles/bot_release.py", line 80, in _run
    raise ReleaseError(f"{what} failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
roles.bot_release.ReleaseError: building the bot's wheel failed:
  error: subprocess-exited-with-error
  
  × Building wheel for hardkit-bot (pyproject.toml) did not run successfully.
  │ exit code: 1
  ╰─> [18 lines of output]
      running bdist_wheel
      running build
      running build_py
      running egg_info
      writing src/hardkit_bot.egg-info/PKG-INFO
      writing dependency_links to src/hardkit_bot.egg-info/dependency_links.txt
      writing entry points to src/hardkit_bot.egg-info/entry_points.txt
      writing requirements to src/hardkit_bot.egg-info/requires.txt
      writing top-level names to src/hardkit_bot.egg-info/top_level.txt
      reading manifest file 'src/hardkit_bot.egg-info/SOURCES.txt'
      writing manifest file 'src/hardkit_bot.egg-info/SOURCES.txt'
      warning: build_py: byte-compiling is disabled, skipping.
      
      installing to build/bdist.linux-x86_64/wheel
      running install
      running install_lib
      copying build/lib/hardkit_bot/cli.py -> build/bdist.linux-x86_64/wheel/./hardkit_bot
      error: could not create 'build/bdist.linux-x86_64/wheel/./hardkit_bot/cli.py': No such file or directory
      [end of output]
  
  note: This error originates from a subprocess, and is likely not a problem with pip.
  ERROR: Failed building wheel for hardkit-bot
ERROR: Failed to build one or more wheels



""".splitlines()


def test_an_exception_in_the_deploy_code_is_every_hosts_first_error():
    for name in ("bfl2-1", "bfl2-12"):
        assert pyinfra_stopped(EXCEPTION_TAIL, name) == (
            "pyinfra stopped on an exception in /repo/deploy/site.py: roles.bot_release.ReleaseError: building "
            "the bot's wheel failed: ... ERROR: Failed to build one or more wheels")


def test_a_pyinfra_error_line_is_the_reason_unless_it_is_no_hosts_remaining():
    assert pyinfra_stopped(["--> pyinfra error: No such file: inv.py"], "h") == "pyinfra stopped: No such file: inv.py"
    assert pyinfra_stopped(["--> pyinfra error: No hosts remaining!"], "h").startswith("pyinfra stopped and said nothing")


def test_a_host_named_like_the_start_of_another_is_not_mixed_up():
    tail = ["--> Starting operation: A", "    [web-1] Error: boom", "    [web-10] Error: other"]
    assert pyinfra_stopped(tail, "web-1") == "pyinfra stopped at 'A': Error: boom"


def test_lines_before_any_operation_are_kept_without_one():
    tail = ["    [h] Could not connect (timed out)"]
    assert pyinfra_stopped(tail, "h") == "pyinfra stopped: Could not connect (timed out)"
