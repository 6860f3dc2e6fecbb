"""deploy/fact_batch.py: many facts asked in one command give exactly the answers asked one by one,
and a change made during the run is seen by every later fact.

Real shell, real pyinfra (its @local connector runs the same command path the SSH one does).
"""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from deploy import fact_batch
from tests.unit.pyinfra_local import local_state

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
    monkeypatch.setattr(fact_batch, "CACHE", tmp_path / "facts")
    fact_batch.install()

    def new():
        fact_batch._save_all()
        fact_batch.reset()
        return local_state()

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


def test_a_question_asked_as_root_and_then_through_sudo_is_kept_once(tmp_path, monkeypatch):
    """hardkit's first deploy logs in as root, later ones as the admin with sudo: the same questions."""
    monkeypatch.setattr(fact_batch, "CACHE", tmp_path)
    as_root, as_admin = ("echo same", {"_sudo": False}), ("echo same", {"_sudo": True})
    fact_batch.save_questions("h", [as_root, ("echo only-root", {"_sudo": False})])
    fact_batch.save_questions("h", [as_admin])
    assert fact_batch.load_questions("h") == [as_admin, ("echo only-root", {"_sudo": False})]
    fact_batch.save_questions("h", [as_admin, as_root])  # one run asking it both ways: still once
    assert fact_batch.load_questions("h") == [as_admin, ("echo only-root", {"_sudo": False})]


def test_a_cache_holding_a_question_twice_asks_it_once(tmp_path, monkeypatch):
    """A cache written before questions were kept once (root's copy and sudo's copy) costs no double work."""
    import json

    monkeypatch.setattr(fact_batch, "CACHE", tmp_path)
    cached = [["echo a", {"_sudo": True}, 0], ["echo b", {"_sudo": True}, 0],
              ["echo a", {"_sudo": False}, 1], ["echo b", {"_sudo": False}, 1]]
    fact_batch.cache_file("h").write_text(json.dumps(cached))
    sent = []

    def run(command, **arguments):
        script = subprocess.run(["sh", "-c", str(command).replace("| sh", "")], capture_output=True, text=True).stdout
        sent.append(script)
        out = subprocess.run(["sh", "-s"], input=script, capture_output=True, text=True).stdout
        return True, type("Out", (), {"stdout_lines": out.splitlines()})()

    answers = fact_batch.HostAnswers("h")
    answers.fetch(run, {"_sudo": True})
    assert len(sent) == 1 and sent[0].count("echo a") == 1 and sent[0].count("echo b") == 1
    assert answers.stats["batched"] == 2
    assert answers.answers[fact_batch.key_of("echo a", {"_sudo": True})] == (0, ["a"], [])


def _unit_question(prop: str, unit: str) -> str:
    """pyinfra's own command for SystemdStatus (SubState) / SystemdEnabled (UnitFileState) of one unit."""
    from pyinfra.facts.systemd import SystemdEnabled, SystemdStatus

    fact = {"SubState": SystemdStatus, "UnitFileState": SystemdEnabled}[prop]()
    return f"if command -v systemctl >/dev/null 2>&1; then ( {fact.command(services=unit).get_raw_value()} ); " \
           "else echo '##PYINFRA_NOCMD##'; fi"


def test_unit_questions_go_as_one_systemctl_and_each_gets_its_own_units_lines():
    questions = ["echo first", _unit_question("SubState", "ssh.service"), _unit_question("UnitFileState", "sshd.service"),
                 _unit_question("UnitFileState", "ssh.service"), "echo last"]
    assert all(fact_batch._Units.pattern.match(q) for q in questions[1:4])  # pyinfra's text, as the batch sees it
    sent, unpack = fact_batch.merge_questions(questions)
    assert sent[:2] == ["echo first", "echo last"] and len(sent) == 3
    assert "systemctl show --all --property Id --property SubState --property UnitFileState ssh.service sshd.service" \
        in sent[2]
    # systemctl's order of properties, one block per unit named (an alias answers with the unit's Id)
    out = ["Id=ssh.service", "SubState=running", "UnitFileState=enabled", "",
           "Id=ssh.service", "SubState=running", "UnitFileState=enabled"]
    answers = unpack({0: (0, ["first"], []), 1: (0, ["last"], []), 2: (0, out, [])})
    assert answers == {0: (0, ["first"], []), 4: (0, ["last"], []),
                       1: (0, ["Id=ssh.service", "SubState=running"], []),
                       2: (0, ["Id=ssh.service", "UnitFileState=enabled"], []),
                       3: (0, ["Id=ssh.service", "UnitFileState=enabled"], [])}


@pytest.mark.parametrize("answer", [(0, ["Id=a.service", "SubState=dead"], []),  # one block for two units
                                    (1, [], []), (0, ["Id=a.service", "SubState=dead", "", "Id=b.service",
                                                      "SubState=dead"], ["warning"])])
def test_unit_questions_whose_merged_answer_is_not_one_clean_block_per_unit_are_asked_live(answer):
    questions = [_unit_question("SubState", "a.service"), _unit_question("SubState", "b.service")]
    sent, unpack = fact_batch.merge_questions(questions)
    assert len(sent) == 1 and unpack({0: answer}) == {}


def test_a_lone_unit_question_is_sent_as_it_is():
    questions = ["echo x", _unit_question("SubState", "a.service")]
    sent, unpack = fact_batch.merge_questions(questions)
    assert sent == questions and unpack({0: 1, 1: 2}) == {0: 1, 1: 2}


def test_path_questions_go_as_one_stat_and_one_sha1sum_and_answer_as_asked_alone(tmp_path):
    """pyinfra's File and Sha1File commands for a file, a missing path, a folder and links, on this
    machine's shell and coreutils: the merged commands give each question the answer it gets alone,
    except Sha1File of what exists but is not a regular file, which is left to be asked live."""
    from pyinfra.facts.files import File, Sha1File

    (tmp_path / "file").write_text("content\n")
    # File's answer shows the access time; a file's first read (sha1sum, in the merged command) updates it
    # under relatime while atime <= mtime, and a second boundary in between changed the answer (a flaky run).
    now = time.time()
    os.utime(tmp_path / "file", (now, now - 60))
    (tmp_path / "folder").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "file")
    (tmp_path / "dangling").symlink_to(tmp_path / "gone")
    paths = [str(tmp_path / n) for n in ("file", "missing", "folder", "link", "dangling")]
    questions = ([File().command(path=p).get_raw_value() for p in paths]
                 + [Sha1File().command(path=p).get_raw_value() for p in paths] + ["echo other"])
    assert all(fact_batch._Stats.pattern.match(q) for q in questions[:5])
    assert all(fact_batch._Sha1s.pattern.match(q) for q in questions[5:10])
    sent, unpack = fact_batch.merge_questions(questions)
    assert len(sent) == 3 and sent[0] == "echo other"
    answers = unpack({i: one_by_one(c) for i, c in enumerate(sent)})
    folder = 5 + paths.index(str(tmp_path / "folder"))  # a dangling link is missing to `test -e`: answered
    assert set(answers) == set(range(len(questions))) - {folder}
    assert answers == {i: one_by_one(questions[i]) for i in answers}


def test_a_merged_path_answer_that_does_not_add_up_answers_nothing():
    questions = [f"test -e /p{i} && ( sha1sum /p{i} 2> /dev/null || shasum /p{i} 2> /dev/null || "
                 f"sha1 /p{i} 2> /dev/null ) || true" for i in (1, 2)]
    sent, unpack = fact_batch.merge_questions(questions)
    assert len(sent) == 1
    assert unpack({0: (0, ["f11", "abc  /p1"], [])}) == {}  # a line short
    assert unpack({0: (1, ["f11", "abc  /p1", "def  /p2"], [])}) == {}  # sha1sum failed
    assert unpack({0: (0, ["f10", "abc  /p1"], [])}) == {0: (0, ["abc  /p1"], []), 1: (0, [], [])}


def _users_by_hand(fake_bin=None):
    import os

    from pyinfra.facts.server import Users

    env = dict(os.environ, PATH=f"{fake_bin}:{os.environ['PATH']}") if fake_bin else None
    original = Users().command()
    sent, unpack = fact_batch.merge_questions([original])
    assert len(sent) == 1 and sent[0] != original
    run = lambda c: subprocess.run(["sh", "-c", c], capture_output=True, text=True, env=env)  # noqa: E731
    alone, rewritten = run(original), run(sent[0])
    got = unpack({0: (rewritten.returncode, fact_batch._lines_of(rewritten.stdout),
                      fact_batch._lines_of(rewritten.stderr))})
    return got[0], (alone.returncode, fact_batch._lines_of(alone.stdout), fact_batch._lines_of(alone.stderr))


def test_the_users_question_rewritten_answers_as_pyinfras_loop_on_this_machine():
    rewritten, alone = _users_by_hand()
    assert rewritten == alone and len(alone[1]) > 1


def test_the_users_rewrite_runs_pyinfras_loop_where_its_check_does_not_pass(tmp_path):
    (tmp_path / "awk").write_text("#!/bin/sh\nexit 1\n")  # the check fails (as on a host with odd names)
    (tmp_path / "awk").chmod(0o755)
    rewritten, alone = _users_by_hand(tmp_path)
    assert rewritten == alone and len(alone[1]) > 1
