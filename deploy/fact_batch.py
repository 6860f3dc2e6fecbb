"""Every fact of a host read in one SSH round-trip, live, at the start of each run.

pyinfra runs one SSH command per fact (each through `sudo` once the admin is the login): a no-op
redeploy of one host asked about 180 questions one by one, ~70 ms each. Here the controller
remembers *which questions* the last run asked each host (the fact commands, never their
answers; ~/.cache/hardkit/facts/<host>.json) and, when this run first needs a fact, asks all of
them in one command. Every answer therefore comes from the host as it is now, in this run:

- a fact whose command is not in the batch (new data, a new role) is asked on its own, as before;
- the batch's answers stand only until this run changes something on the host: the first
  operation command, upload or controller-side function on that host drops them, and every later
  fact is asked live again (a later operation may depend on what an earlier one changed).

So a file edited by hand, a package removed or a unit disabled is seen exactly as before; only the
number of round-trips changes. Installed by `deploy/site.py` (`install()`), before any role runs.
"""

from __future__ import annotations

import base64
import gzip
import json
import os
import re
from pathlib import Path

#: Where the questions of the last run are kept, one JSON file per host (no answers, no secrets:
#: fact commands are file paths, package and unit names).
CACHE = Path(os.environ.get("HARDKIT_CACHE", Path.home() / ".cache" / "hardkit")) / "facts"
#: Connector arguments a batched fact may carry (anything else, e.g. a callable, is asked live).
_PLAIN_ARGS = (bool, int, float, str, type(None))


def _plain(value) -> bool:
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    return isinstance(value, _PLAIN_ARGS)


def key_of(command: str, arguments: dict) -> str | None:
    """The question's identity: its shell text and connector arguments (None: not batchable)."""
    if not _plain(arguments):
        return None
    arguments = {k: v for k, v in arguments.items() if k not in ("_stdin", "print_output", "print_input")}
    return json.dumps([command, sorted((k, list(v) if isinstance(v, tuple) else v) for k, v in arguments.items())])


#: Questions are asked in this many parallel lanes on the host (a few slow ones, such as a
#: file-system walk for SUID files, would otherwise add up).
LANES = 4


def batch_script(commands: list[str], lanes: int = LANES) -> str:
    """One shell script asking every command; each answers on one line:
    `<index> <exit status> <base64 stdout> <base64 stderr>` (stdin of each is /dev/null)."""
    lines = ['d=$(mktemp -d) || exit 1', 'trap \'rm -rf "$d"\' EXIT']
    for lane in range(min(lanes, len(commands))):
        lines.append("(")
        for i in range(lane, len(commands), lanes):
            lines.append(f'( {commands[i]}\n) >"$d/o{lane}" 2>"$d/e{lane}" </dev/null; rc=$?; '
                         f'printf "%s %s %s %s\\n" {i} "$rc" "$(base64 -w0 "$d/o{lane}")" "$(base64 -w0 "$d/e{lane}")"'
                         f' >>"$d/a{lane}"')
        lines.append(") &")
    lines.append("wait")
    lines.append('cat "$d"/a* 2>/dev/null')
    return "\n".join(lines) + "\n"


#: The most base64 text one batch command carries: the whole command is one argument of
#: `sh -c` on the host, and Linux caps one argument at 128 KiB.
MAX_COMMAND_BYTES = 96 * 1024


def batch_commands(commands: list[str]):
    """(index of the first question, pyinfra command) for as few commands as fit: each is the
    batch script, gzipped and base64-encoded, unpacked and run by `sh` on the host."""
    from pyinfra.api import StringCommand

    def packed(part: list[str]) -> str:
        return base64.b64encode(gzip.compress(batch_script(part).encode(), mtime=0)).decode()

    start, size = 0, len(commands)
    while start < len(commands):
        part = commands[start:start + size]
        text = packed(part)
        if len(text) > MAX_COMMAND_BYTES and size > 1:
            size = max(1, size // 2)
            continue
        yield start, StringCommand(f"echo {text} | base64 -d | gzip -dc | sh")
        start += len(part)


_ANSWER = re.compile(r"^(\d+) (\d+) (\S*) (\S*)$")


def parse_answers(lines: list[str]) -> dict[int, tuple[int, list[str], list[str]]]:
    """{index: (exit status, stdout lines, stderr lines)} from the batch's output lines."""
    answers = {}
    for line in lines:
        m = _ANSWER.match(line)
        if m:
            answers[int(m.group(1))] = (int(m.group(2)), _lines(m.group(3)), _lines(m.group(4)))
    return answers


def _lines(b64: str) -> list[str]:
    return _lines_of(base64.b64decode(b64).decode("utf-8", errors="replace"))


def _lines_of(text: str) -> list[str]:
    """Split the way pyinfra reads a channel: by newline, without the final empty piece."""
    if not text:
        return []
    parts = text.split("\n")
    return parts[:-1] if parts[-1] == "" else parts


def _transport_free(arguments: dict) -> str | None:
    """The arguments without `_sudo` (how root is reached, not who answers), as a comparable key."""
    return key_of("", {k: v for k, v in arguments.items() if k != "_sudo"})


def cache_file(host_name: str) -> Path:
    return CACHE / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', host_name)}.json"


#: A remembered question no run has asked this many times in a row is forgotten.
FORGET_AFTER = 3


def _read(path: Path) -> list[list]:
    try:
        return [[c, a, int(n)] for c, a, n in json.loads(path.read_text())]
    except (OSError, ValueError, TypeError):
        return []


def load_questions(host_name: str) -> list[tuple[str, dict]]:
    """The questions remembered for this host, else those of the host asked most recently (a fleet
    shares most of them), else none."""
    path = cache_file(host_name)
    if not path.is_file() and CACHE.is_dir():
        others = sorted(CACHE.glob("*.json"), key=lambda p: p.stat().st_mtime)
        path = others[-1] if others else path
    return [(c, a) for c, a, _ in _read(path)]


def save_questions(host_name: str, asked: list[tuple[str, dict]]) -> None:
    """Remember this run's questions, and for a few runs those it did not ask (an interrupted run
    asks fewer)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    os.chmod(CACHE, 0o700)
    path = cache_file(host_name)
    now = {key_of(c, a) for c, a in asked}
    kept = [[c, a, n + 1] for c, a, n in _read(path) if key_of(c, a) not in now and n + 1 < FORGET_AFTER]
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps([[c, a, 0] for c, a in asked] + kept))
    os.replace(tmp, path)


class HostAnswers:
    """The batch's answers for one host during one run, and the questions this run asked."""

    def __init__(self, host_name: str):
        self.host_name = host_name
        self.asked: dict[str, tuple[str, dict]] = {}  # key -> (command, arguments), in asking order
        self.answers: dict[str, tuple[int, list[str], list[str]]] = {}
        self.batched = False  # the batch ran (or was found empty) for this run
        self.valid = True  # no change made on the host yet in this run
        self.stats = {"batched": 0, "from_batch": 0, "live": 0}

    def fetch(self, run, arguments: dict) -> None:
        """Ask every remembered question with these connector arguments in one command."""
        self.batched = True
        wanted = _transport_free(arguments)
        # Asked now with this run's arguments: a question remembered from a run that logged in as
        # root is the same question when the admin's sudo makes us root (hardkit's two logins).
        questions = [(c, arguments) for c, a in load_questions(self.host_name) if _transport_free(a) == wanted]
        if not questions:
            return
        arguments = {k: v for k, v in arguments.items() if k != "_stdin"}
        for first, command in batch_commands([c for c, _ in questions]):
            status, output = run(command, **arguments)
            if not status:
                continue  # this part failed as a whole: its facts are asked live, as without the batch
            for i, (rc, out, err) in parse_answers(output.stdout_lines).items():
                c, a = questions[first + i]
                self.answers[key_of(c, a)] = (rc, out, err)
        self.stats["batched"] = len(self.answers)


_hosts: dict[str, HostAnswers] = {}


def reset() -> None:
    """Forget this process's answers and questions (a new run in the same process, e.g. a test)."""
    _hosts.clear()


def answers_for(host) -> HostAnswers:
    if host.name not in _hosts:
        _hosts[host.name] = HostAnswers(host.name)
    return _hosts[host.name]


def install() -> None:
    """Route pyinfra's fact commands through the batch; idempotent."""
    from pyinfra.api import facts
    from pyinfra.api.command import FunctionCommand
    from pyinfra.api.host import Host

    if getattr(facts, "_hardkit_batched", False):
        return
    facts._hardkit_batched = True
    read_fact = facts._get_fact

    def fact_read(state, host, *args, **kwargs):
        # Per host, not per thread: pyinfra runs hosts as greenlets of one thread, and one host's
        # operation must never be taken for a fact because another host is reading one.
        host._hardkit_in_fact = True
        try:
            return read_fact(state, host, *args, **kwargs)
        finally:
            host._hardkit_in_fact = False

    facts._get_fact = fact_read
    run_command, put_file, run_function = Host.run_shell_command, Host.put_file, FunctionCommand.execute

    def run_shell_command(self, command, *args, **kwargs):
        if not getattr(self, "_hardkit_in_fact", False) or args:
            answers_for(self).valid = False  # an operation's command: later facts are asked live
            return run_command(self, command, *args, **kwargs)
        return _answer_fact(self, command, kwargs, lambda *a, **k: run_command(self, *a, **k))

    def upload(self, *args, **kwargs):
        answers_for(self).valid = False
        return put_file(self, *args, **kwargs)

    def function(self, state, host, *args, **kwargs):
        answers_for(host).valid = False
        return run_function(self, state, host, *args, **kwargs)

    Host.run_shell_command, Host.put_file, FunctionCommand.execute = run_shell_command, upload, function
    import atexit

    atexit.register(_save_all)


def _answer_fact(host, command, kwargs: dict, run):
    from pyinfra.connectors.util import CommandOutput, OutputLine

    printing = {k: kwargs.pop(k) for k in ("print_output", "print_input") if k in kwargs}
    text = command.get_raw_value() if hasattr(command, "get_raw_value") else str(command)
    key = key_of(text, kwargs)
    answers = answers_for(host)
    if key is not None:
        answers.asked.setdefault(key, (text, kwargs))
    if key is not None and answers.valid:
        if not answers.batched:
            answers.fetch(run, dict(kwargs))
        if answers.valid and key in answers.answers:
            rc, out, err = answers.answers[key]
            answers.stats["from_batch"] += 1
            ok = rc in tuple(kwargs.get("_success_exit_codes") or (0,))
            lines = [OutputLine("stdout", s) for s in out] + [OutputLine("stderr", s) for s in err]
            return ok, CommandOutput(lines)
    answers.stats["live"] += 1
    return run(command, **printing, **kwargs)


def _save_all() -> None:
    for answers in _hosts.values():
        if answers.asked:
            try:
                save_questions(answers.host_name, list(answers.asked.values()))
            except OSError:
                pass  # a read-only home only costs speed
    out = os.environ.get("HARDKIT_FACT_STATS")
    if out:
        with open(out, "w") as f:
            json.dump({h: a.stats for h, a in _hosts.items()}, f)
