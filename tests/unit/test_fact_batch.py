"""deploy/fact_batch.py: many facts asked in one command give exactly the answers asked one by one,
and a change made during the run is seen by every later fact.

Real shell, real pyinfra (its @local connector runs the same command path the SSH one does).
"""

from __future__ import annotations

import subprocess

import pytest

from deploy import fact_batch

TRICKY = [
    "echo first",
    "echo one; echo two",
    "printf 'no newline'",
    "true",
    "echo out; echo err >&2; exit 3",
    "echo 'quote '\"'\"'s' # a trailing comment",
    "cat; echo 'stdin was empty'",
    "printf 'a\\n\\nb\\n'",
    "for i in 1 2 3; do echo $i; done | tail -1",
    "exit 1",
]


def one_by_one(command: str) -> tuple[int, list[str], list[str]]:
    p = subprocess.run(["sh", "-c", command], capture_output=True, text=True, stdin=subprocess.DEVNULL)
    return p.returncode, fact_batch._lines_of(p.stdout), fact_batch._lines_of(p.stderr)


@pytest.mark.parametrize("lanes,count", [(1, len(TRICKY)), (4, len(TRICKY)), (4, 1)])
def test_batch_answers_equal_one_command_at_a_time(lanes, count):
    script = fact_batch.batch_script(TRICKY[:count], lanes=lanes)
    out = subprocess.run(["sh", "-s"], input=script, capture_output=True, text=True, check=True).stdout
    answers = fact_batch.parse_answers(out.splitlines())
    assert answers == {i: one_by_one(c) for i, c in enumerate(TRICKY[:count])}


def test_a_batch_too_long_for_one_argument_is_split_and_loses_no_question():
    import base64
    import os

    # Incompressible text, so the packed batch really exceeds one argument.
    commands = [f"echo {i} {base64.b64encode(os.urandom(300)).decode()}" for i in range(600)]
    parts = list(fact_batch.batch_commands(commands))
    assert len(parts) > 1 and all(len(str(c)) <= fact_batch.MAX_COMMAND_BYTES + 100 for _, c in parts)
    assert [first for first, _ in parts][0] == 0
    answered = {}
    for first, command in parts:
        out = subprocess.run(["sh", "-c", str(command)], capture_output=True, text=True, check=True).stdout
        answered.update({first + i: a for i, a in fact_batch.parse_answers(out.splitlines()).items()})
    assert sorted(answered) == list(range(len(commands)))
    assert all(rc == 0 and out[0].startswith(f"{i} ") for i, (rc, out, _) in answered.items())


@pytest.fixture
def local_run(tmp_path, monkeypatch):
    """A pyinfra state on @local with the batch installed; `new()` starts another run."""
    from pyinfra.api import Config, Inventory, State
    from pyinfra.api.connect import connect_all

    monkeypatch.setattr(fact_batch, "CACHE", tmp_path / "facts")
    fact_batch.install()

    def new():
        fact_batch._save_all()
        fact_batch.reset()
        state = State(Inventory((["@local"], {})), Config())
        connect_all(state)
        return state, state.inventory.get_host("@local")

    yield new
    fact_batch.reset()


def test_a_hand_edit_between_runs_and_a_change_during_the_run_are_both_seen(local_run, tmp_path):
    from pyinfra.api.facts import get_fact
    from pyinfra.facts.files import Sha1File

    target = tmp_path / "managed.conf"
    target.write_text("as deployed\n")
    digest = lambda: __import__("hashlib").sha1(target.read_bytes()).hexdigest()  # noqa: E731

    state, host = local_run()
    assert get_fact(state, host, Sha1File, kwargs={"path": str(target)}) == digest()
    assert fact_batch.answers_for(host).stats == {"batched": 0, "from_batch": 0, "live": 1}

    target.write_text("edited by hand\n")  # between runs: the next run must see it
    state, host = local_run()
    assert get_fact(state, host, Sha1File, kwargs={"path": str(target)}) == digest()
    assert fact_batch.answers_for(host).stats == {"batched": 1, "from_batch": 1, "live": 0}

    # An operation's command during the run: every later fact is asked live again.
    host.run_shell_command(f"echo 'written by an operation' > {target}")
    assert get_fact(state, host, Sha1File, kwargs={"path": str(target)}) == digest()
    assert fact_batch.answers_for(host).stats["live"] == 1


def test_questions_not_asked_for_a_few_runs_are_forgotten(tmp_path, monkeypatch):
    monkeypatch.setattr(fact_batch, "CACHE", tmp_path)
    kept, dropped = ("echo kept", {"_sudo": True}), ("echo gone", {"_sudo": True})
    fact_batch.save_questions("h", [kept, dropped])
    for _ in range(fact_batch.FORGET_AFTER - 1):
        fact_batch.save_questions("h", [kept])
        assert dropped in fact_batch.load_questions("h")
    fact_batch.save_questions("h", [kept])
    assert fact_batch.load_questions("h") == [kept]


def test_a_callable_argument_is_never_batched():
    assert fact_batch.key_of("echo x", {"_retry_until": lambda out: True}) is None
    assert fact_batch.key_of("echo x", {"_sudo": True}) == fact_batch.key_of("echo x", {"_sudo": True, "_stdin": None})
