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
number of round-trips changes. Inside the batch, the questions of a few frequent shapes (one unit's
state, one path's stat, one file's SHA-1: ~190 of a deployed host's ~230) are asked as one command
per shape instead of a process or more each, and each question's answer is cut out of it exactly as
the question alone answers (merge_questions; anything that does not add up is asked live). What
the host spends on a no-op redeploy is measured by bench/noop_profile.py.
Installed by `deploy/site.py` (`install()`), before any role runs.
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
    """One shell script asking every command (stdin of each is /dev/null). Each answer is kept in files
    of a private temporary folder: `<index>.o` (stdout), `<index>.e` (stderr) and a line
    `<index> <exit status>` in `r<lane>`; at the end the folder is written once as one line, a tar
    archive gzipped and base64-encoded (a few processes in all, not an encoder per answer)."""
    lines = ['d=$(mktemp -d) || exit 1', 'trap \'rm -rf "$d"\' EXIT']
    for lane in range(min(lanes, len(commands))):
        lines.append("(")
        for i in range(lane, len(commands), lanes):
            lines.append(f'( {commands[i]}\n) >"$d/{i}.o" 2>"$d/{i}.e" </dev/null; echo "{i} $?" >>"$d/r{lane}"')
        lines.append(") &")
    lines.append("wait")
    lines.append('tar -C "$d" -cf - . | gzip -1 | base64 -w0 && echo')
    return "\n".join(lines) + "\n"


#: The most base64 text one batch command carries: the whole command is one argument of
#: `sh -c` on the host, and Linux caps one argument at 128 KiB.
MAX_COMMAND_BYTES = 96 * 1024
#: How each batch command ends: the packed script, unpacked and run by `sh` (benches spot it by this).
BATCH_TAIL = "| base64 -d | gzip -dc | sh"


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
        yield start, StringCommand(f"echo {text} {BATCH_TAIL}")
        start += len(part)


def parse_answers(lines: list[str]) -> dict[int, tuple[int, list[str], list[str]]]:
    """{index: (exit status, stdout lines, stderr lines)} from the batch's output (batch_script); none
    from output that does not unpack (those questions are then asked live)."""
    import io
    import tarfile

    try:
        packed = gzip.decompress(base64.b64decode("".join(line.strip() for line in lines), validate=True))
        with tarfile.open(fileobj=io.BytesIO(packed)) as tar:
            files = {m.name.rsplit("/", 1)[-1]: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
    except (ValueError, OSError, EOFError, tarfile.TarError):
        return {}
    answers = {}
    for name, content in files.items():
        if not name.startswith("r"):
            continue
        for line in content.decode(errors="replace").splitlines():
            index, _, status = line.partition(" ")
            if index.isdigit() and status.isdigit() and f"{index}.o" in files and f"{index}.e" in files:
                answers[int(index)] = (int(status), _decoded(files[f"{index}.o"]), _decoded(files[f"{index}.e"]))
    return answers


def _decoded(raw: bytes) -> list[str]:
    return _lines_of(raw.decode("utf-8", errors="replace"))


def _lines_of(text: str) -> list[str]:
    """Split the way pyinfra reads a channel: by newline, without the final empty piece."""
    if not text:
        return []
    parts = text.split("\n")
    return parts[:-1] if parts[-1] == "" else parts


class _Merge:
    """Questions of one shape (pyinfra's command for one unit, one path...) asked as one command: `pattern`
    matches one question (its groups name what it asks about), `command` asks all of them at once, and
    `split` cuts that command's answer into each question's own answer exactly as it would have been
    asked alone, or None for a question it cannot answer so (asked live instead)."""

    pattern: re.Pattern
    #: How many questions of the shape make it worth a merged command (1: a cheaper rewrite of one question).
    least = 2

    def command(self, asked: list[tuple]) -> str:
        raise NotImplementedError

    def split(self, answer: tuple[int, list[str], list[str]], asked: list[tuple]) -> list | None:
        raise NotImplementedError


class _Units(_Merge):
    """pyinfra's SystemdStatus (SubState) and SystemdEnabled (UnitFileState) of one unit of the system
    manager: one `systemctl show` of every unit and both properties; each unit's answer is its own block of
    that output cut to the lines a question for it alone prints (`Id=` and its property, in systemctl's
    order). Used only when that command succeeded, wrote nothing to stderr and gave one block per unit."""

    pattern = re.compile(r"^if command -v systemctl >/dev/null 2>&1; then \( systemctl show --all "
                         r"--property Id --property (SubState|UnitFileState) ([A-Za-z0-9@._:-]+) \); "
                         r"else echo '##PYINFRA_NOCMD##'; fi$")

    def command(self, asked):
        units = list(dict.fromkeys(unit for _, unit in asked))
        return ("if command -v systemctl >/dev/null 2>&1; then ( systemctl show --all --property Id "
                f"--property SubState --property UnitFileState {' '.join(units)} ); "
                "else echo '##PYINFRA_NOCMD##'; fi")

    def split(self, answer, asked):
        rc, out, err = answer
        units = list(dict.fromkeys(unit for _, unit in asked))
        blocks, block = [], []
        for line in out + [""]:
            if line:
                block.append(line)
            elif block:
                blocks.append(block)
                block = []
        if rc != 0 or err or len(blocks) != len(units):
            return None
        by_unit = dict(zip(units, blocks))
        return [(0, [line for line in by_unit[unit] if line.split("=", 1)[0] in ("Id", prop)], [])
                for prop, unit in asked]


#: A path as pyinfra writes it unquoted in a command (absolute, no character the shell would treat).
_PATH = r"(/[A-Za-z0-9_/.@:+,=-]*)"


class _PathsMerge(_Merge):
    """Questions about one path each: the merged command first prints `f` and one flag per path (`flags`,
    shell that sets $f), then runs `tool` once on the paths flagged 1, which prints one line per path;
    a path flagged 0 gets `missing` (what the question alone answers then), any other flag is asked live.
    Used only when the command succeeded, wrote nothing to stderr and printed one line per path flagged 1."""

    flags: str
    tool: str
    missing: tuple = (0, [], [])

    def command(self, asked):
        paths = " ".join(dict.fromkeys(path for path, in asked))
        return (f's=; set --; for p in {paths}; do {self.flags}; s="$s$f"; '
                f'[ "$f" = 1 ] && set -- "$@" "$p"; done; echo "f$s"; [ $# -eq 0 ] || {self.tool} "$@"')

    def split(self, answer, asked):
        rc, out, err = answer
        paths = list(dict.fromkeys(path for path, in asked))
        if rc != 0 or err or not out or not out[0].startswith("f") or len(out[0]) != len(paths) + 1:
            return None
        flags = out[0][1:]
        lines = out[1:]
        if len(lines) != flags.count("1"):
            return None
        by_path, found = {}, iter(lines)
        for path, flag in zip(paths, flags):
            by_path[path] = (0, [next(found)], []) if flag == "1" else self.missing if flag == "0" else None
        return [by_path[path] for path, in asked]


class _Stats(_PathsMerge):
    """pyinfra's File, Directory and Link facts (GNU stat of one path, nothing when it does not exist)."""

    pattern = re.compile(rf"^! \(test -e {_PATH} \|\| test -L \1 \) \|\| \( stat -c 'user=%U group=%G mode=%A "
                         r"atime=%X mtime=%Y ctime=%Z size=%s %N' \1 2> /dev/null \|\| stat -f 'user=%Su group=%Sg "
                         r"mode=%Sp atime=%a mtime=%m ctime=%c size=%z %N%SY' \1 \|\| ls -ld \1 \)$")
    flags = 'if test -e "$p" || test -L "$p"; then f=1; else f=0; fi'
    tool = "stat -c 'user=%U group=%G mode=%A atime=%X mtime=%Y ctime=%Z size=%s %N'"


class _Sha1s(_PathsMerge):
    """pyinfra's Sha1File (sha1sum of one path, nothing when it does not exist): one sha1sum of every
    regular file; a path that exists but is not a regular file (a folder, a device) is asked live."""

    pattern = re.compile(rf"^test -e {_PATH} && \( sha1sum \1 2> /dev/null \|\| shasum \1 2> /dev/null \|\| "
                         r"sha1 \1 2> /dev/null \) \|\| true$")
    flags = 'if test -f "$p"; then f=1; elif test -e "$p"; then f=x; else f=0; fi'
    tool = "sha1sum"


def _users_command() -> str:
    from pyinfra.facts.server import Users

    return Users().command()


class _Users(_Merge):
    """pyinfra's Users fact, whose shell loop starts some 13 processes per account (grep, lastlog, grep,
    tr, grep, cut, two id and their subshells): ~0.3 s of a lab host's CPU, the dearest question of a
    no-op. Asked instead as one `lastlog` and one awk for every account's passwd entry, last login (its
    line of `lastlog`, spaces squeezed) and shadow password, and the same two `id` per account; the
    line printed per account is the one the loop prints. Only where that equivalence is plain: every
    account name lower-case letters, digits, `_` or `-` (at most 16, so lastlog prints it whole and no
    name is a pattern `grep` would read otherwise), no name twice in passwd or shadow, no `|` in a
    passwd line; any other host runs pyinfra's loop as it is (the same command, inside the rewrite)."""

    least = 1

    @property
    def pattern(self):  # pyinfra's own text, exactly (no group: nothing to merge)
        return re.compile(re.escape(_users_command()) + "$")

    def command(self, asked):
        check = ("awk -F: 'FILENAME == \"/etc/passwd\" && ($1 !~ /^[a-z_][a-z0-9_-]*$/ || length($1) > 16 || "
                 "seen[$1]++ || index($0, \"|\")) { exit 1 } FILENAME == \"/etc/shadow\" && shadow[$1]++ { exit 1 }' "
                 "/etc/passwd /etc/shadow")
        lines = ("lastlog 2>/dev/null | awk -F: 'FILENAME == \"/etc/shadow\" { pw[$1] = $2; next } "
                 "FILENAME == \"/etc/passwd\" { print $1 \"|\" $0 \"|\" ll[$1] \"|\" pw[$1]; next } "
                 "{ split($0, w, \" \"); if (w[1] != \"\") { l = $0; gsub(/ +/, \" \", l); ll[w[1]] = l } }' "
                 "/etc/shadow - /etc/passwd")
        loop = ('while IFS="|" read -r i ENTRY LASTLOG PASSWORD; do '
                'echo "$ENTRY|`id -gn $i`|`id -Gn $i`|$LASTLOG|$PASSWORD"; done')
        return f"if {check} 2>/dev/null; then {lines} | {loop}; else\n{_users_command()}\nfi"

    def split(self, answer, asked):
        return [answer]


#: The shapes of question merged into one command each (merge_questions).
MERGES = (_Units(), _Stats(), _Sha1s(), _Users())


def merge_questions(commands: list[str]):
    """(questions to send, unpack): the questions of each shape in MERGES (two or more of it) are sent as
    one command of that shape instead of a process or more each; unpack({sent index: answer}) gives
    {index in `commands`: answer}, leaving out the questions the merged answer cannot answer exactly
    as asked alone (those are asked live)."""
    groups, taken = [], set()
    for merge in MERGES:
        pattern = merge.pattern
        found = [(i, m.groups()) for i, c in enumerate(commands) if i not in taken and (m := pattern.match(c))]
        if len(found) >= merge.least:
            groups.append((merge, found))
            taken.update(i for i, _ in found)
    if not groups:
        return commands, lambda got: got
    rest = [i for i in range(len(commands)) if i not in taken]

    def unpack(got: dict) -> dict:
        answers = {rest[j]: answer for j, answer in got.items() if j < len(rest)}
        for k, (merge, found) in enumerate(groups):
            answer = got.get(len(rest) + k)
            split = merge.split(answer, [g for _, g in found]) if answer else None
            answers.update({i: a for (i, _), a in zip(found, split or []) if a is not None})
        return answers

    return [commands[i] for i in rest] + [merge.command([g for _, g in found]) for merge, found in groups], unpack


def _transport_free(arguments: dict) -> str | None:
    """The arguments without `_sudo` (how root is reached, not who answers), as a comparable key."""
    return key_of("", {k: v for k, v in arguments.items() if k != "_sudo"})


def _question(command: str, arguments: dict) -> tuple[str, str | None]:
    """What is asked, whoever asks it: the command and the arguments without `_sudo`."""
    return command, _transport_free(arguments)


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
    # The same question whichever login asked it (root at a first deploy, the admin's sudo later):
    # kept once, as this run first asked it, then those of earlier runs this one did not ask.
    kept, seen = [], set()
    for c, a, n in [(c, a, -1) for c, a in asked] + _read(path):
        if _question(c, a) not in seen and n + 1 < FORGET_AFTER:
            seen.add(_question(c, a))
            kept.append([c, a, n + 1])
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(kept))
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
        # Each question once: a cache written before questions were kept once may hold one as root
        # asked it and as the admin's sudo asked it, which are the same question now.
        questions = list({c: (c, arguments) for c, a in load_questions(self.host_name)
                          if _transport_free(a) == wanted}.values())
        if not questions:
            return
        arguments = {k: v for k, v in arguments.items() if k != "_stdin"}
        sent, unpack = merge_questions([c for c, _ in questions])
        got = {}
        for first, command in batch_commands(sent):
            status, output = run(command, **arguments)
            if not status:
                continue  # this part failed as a whole: its facts are asked live, as without the batch
            got.update({first + i: answer for i, answer in parse_answers(output.stdout_lines).items()})
        for i, answer in unpack(got).items():
            c, a = questions[i]
            self.answers[key_of(c, a)] = answer
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
