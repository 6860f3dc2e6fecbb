"""Where a no-op redeploy of one nspawn host spends its time, with pyinfra as it comes and with
hardkit's round-trip cuts (deploy/fact_batch.py, deploy/op_order.py), in wall seconds and in CPU
seconds on both sides: the controller's (this process and everything it reaped: pyinfra, ssh) and
the target's (its container's processes, sandbox/target_cpu.py). On a shared machine the CPU seconds
are the steadier figure, and what a fleet of targets on the same CPUs adds up.

Prints, for each of the two (one target, deployed once, then redeployed with nothing to change):
  - the controller's phases: logins and lockout pre-flight, credentials, the pyinfra process, each
    with the target's CPU;
  - inside pyinfra: SSH round-trips by kind (facts, the fact batch, operation commands, uploads,
    connection) with the target's CPU for each, and the rest (planning, Python);
  - per role: wall time and round-trips;
then, on the deployed host: what one SSH login, one command and one `sudo` cost the target, and
each question of the fact batch asked on its own (its target CPU less that of an empty command):
by kind and the most expensive ones.
Written also as JSON and Markdown under reports/bench/. The machine is shared and noisy: compare
figures within one run. HARDKIT_BENCH_REUSE=1 profiles the lab PREFIX already up and deployed
(e.g. `hardkit sandbox up --name PREFIX` and two deploys; its first host only) and leaves it up; HARDKIT_BENCH_PLAIN=0
skips the run with pyinfra as it comes (slow: one round-trip per fact).
"""

from __future__ import annotations

import json
import os
import resource
import shlex
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from deploy import connect, credentials, fact_batch, runner  # noqa: E402
from deploy.inventory import load  # noqa: E402
from sandbox import lab, target_cpu  # noqa: E402
from sandbox.target import all_targets  # noqa: E402

#: The lab this bench boots (HARDKIT_BENCH_PREFIX overrides it, e.g. to keep to a prefix on a shared machine).
PREFIX = os.environ.get("HARDKIT_BENCH_PREFIX", "bnoop")
#: HARDKIT_BENCH_REUSE=1: the lab PREFIX is up and deployed already; it is left up.
REUSE = os.environ.get("HARDKIT_BENCH_REUSE") == "1"
#: HARDKIT_BENCH_PLAIN=0 skips the run with pyinfra as it comes.
PLAIN = os.environ.get("HARDKIT_BENCH_PLAIN", "1") != "0"
REPO = Path(__file__).resolve().parent.parent
PROFILE_SITE = REPO / "bench" / "sites" / "profile_site.py"  # not bench/*.py: `make bench` runs those
OUT_DIR = REPO / "reports" / "bench"


def _controller_cpu() -> float:
    """User + system seconds of this process and the children it reaped (pyinfra and its ssh)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _target_usage(target) -> float:
    return (target_cpu.usage(target) or 0.0) if target else 0.0


def phases_of_one_deploy(path: Path, plain: bool, target=None) -> dict:
    """One deploy through the profiling site; the controller's phases timed around runner.deploy, with the
    target's CPU seconds in each (when `target` is tracked)."""
    timings: dict[str, float] = defaultdict(float)
    target_cpus: dict[str, float] = defaultdict(float)

    def timed(name, fn):
        def wrapper(*args, **kwargs):
            start, cpu = time.perf_counter(), _target_usage(target)
            try:
                return fn(*args, **kwargs)
            finally:
                timings[name] += time.perf_counter() - start
                target_cpus[name] += _target_usage(target) - cpu
        return wrapper

    profile = OUT_DIR / "noop_profile.pyinfra.json"
    env = {"HARDKIT_PROFILE_OUT": str(profile), "HARDKIT_PLAIN_PYINFRA": "1" if plain else "0"}
    if target:
        env["HARDKIT_PROFILE_TARGET_CPU"] = str(target_cpu.group(target) / "cpuacct.usage")
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    real_preflight, real_sync = runner.preflight, credentials.sync_all
    runner.preflight = timed("logins and lockout pre-flight", real_preflight)
    credentials.sync_all = timed("credentials", real_sync)
    try:
        inv = load(path)
        start, ctl, cpu = time.perf_counter(), _controller_cpu(), _target_usage(target)
        result = runner.deploy(inv, inv.hosts[:1], stream=subprocess.DEVNULL, site=PROFILE_SITE)  # a reused lab may have more
        total, ctl, cpu = time.perf_counter() - start, _controller_cpu() - ctl, _target_usage(target) - cpu
    finally:
        runner.preflight, credentials.sync_all = real_preflight, real_sync
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    if not result.ok:
        raise SystemExit(f"bench: deploy failed: {[(h.failed, h.error) for h in result.hosts.values()]}")
    inside = json.loads(profile.read_text())
    profile.unlink()
    pyinfra_process = total - sum(timings.values())
    return {"total": total, "changed": result.changed_ops, "controller_cpu": ctl, "target_cpu": cpu,
            "unchanged": sum(len(h.unchanged) for h in result.hosts.values()),
            "phases": {**timings, "pyinfra process": pyinfra_process},
            "phases_target_cpu": {**target_cpus, "pyinfra process": cpu - sum(target_cpus.values())},
            "pyinfra_inside": inside["pyinfra_seconds"], "trips": inside["trips"], "roles": inside["roles"]}


def host_costs(path: Path, target, samples: int = 9) -> dict:
    """On the deployed host, as the admin: the target CPU of one login, of one command on an open
    connection with and without sudo, and of each fact-batch question asked on its own (the target
    CPU of `sudo -n sh -c 'QUESTION'` less that of `sudo -n sh -c true`), plus the idle target's rate."""
    from statistics import median

    inv = load(path)
    host = inv.hosts[0]
    login = connect.resolve(host)

    def cost(fn, n=samples) -> float:
        seen = []
        for _ in range(n):
            before = _target_usage(target)
            fn()
            seen.append(_target_usage(target) - before)
        return median(seen)

    before = _target_usage(target)
    time.sleep(5)
    idle = (_target_usage(target) - before) / 5

    def login_once(command=None):
        client = connect.open_client(host, login.user, port=login.port)
        try:
            if command:
                connect.run(client, command)
        finally:
            client.close()

    figures = {"idle_cpu_per_s": idle, "login": cost(login_once),
               "login_and_sudo": cost(lambda: login_once("sudo -n true"))}
    client = connect.open_client(host, login.user, port=login.port)
    try:
        figures["command"] = cost(lambda: connect.run(client, "true"))
        figures["sudo_command"] = cost(lambda: connect.run(client, "sudo -n sh -c true"))
        questions = []
        for question, _ in fact_batch.load_questions(host.name):
            line = "sudo -n sh -c " + shlex.quote(f"( {question}\n) >/dev/null 2>&1 </dev/null")
            questions.append((cost(lambda: connect.run(client, line, timeout=300), 1) - figures["sudo_command"],
                              question))
        def batch(commands: list[str]) -> float:
            return sum(cost(lambda: connect.run(client, "sudo -n sh -c " + shlex.quote(str(command)), timeout=300), 1)
                       for _, command in fact_batch.batch_commands(commands))

        asked = [q for _, q in questions]
        sent, _ = fact_batch.merge_questions(asked)
        figures["batch"], figures["batch_unmerged"], figures["sent"] = batch(sent), batch(asked), len(sent)
    finally:
        client.close()
    figures["questions"] = sorted(questions, reverse=True)
    return figures


def question_kind(command: str) -> str:
    if "systemctl show" in command:
        return "systemctl show (unit state)"
    if command.startswith("! (test -e"):
        return "stat (file, directory)"
    if "sha1sum" in command or "sha256sum" in command:
        return "sha1sum (file digest)"
    if command.startswith("find /"):
        return "find / (file-system walk)"
    if "lastlog" in command:
        return "users (pyinfra's Users fact)"
    return "other"


def host_report(costs: dict) -> list[str]:
    ms = lambda s: f"{s * 1000:6.0f} ms"  # noqa: E731
    questions = costs["questions"]
    lines = ["", "target CPU per SSH step on the deployed host (median of 9)",
             f"  one login (key exchange, auth, session)  {ms(costs['login'])}",
             f"  one login running `sudo -n true`          {ms(costs['login_and_sudo'])}",
             f"  one command on an open connection        {ms(costs['command'])}",
             f"  one `sudo -n sh -c true` on it            {ms(costs['sudo_command'])}",
             f"  the idle target, per second              {ms(costs['idle_cpu_per_s'])}",
             "", f"the fact batch's {len(questions)} questions, as {costs['sent']} (fact_batch.merge_questions): one batch "
             f"command {costs['batch']:.2f} s target CPU ({costs['batch_unmerged']:.2f} s with every question on its own "
             f"in it);", f"  asked one by one, outside any batch, their own CPU sums to {sum(c for c, _ in questions):.2f} s:"]
    kinds: dict[str, list] = defaultdict(lambda: [0, 0.0])
    for cpu, q in questions:
        kinds[question_kind(q)][0] += 1
        kinds[question_kind(q)][1] += cpu
    for kind, (n, cpu) in sorted(kinds.items(), key=lambda kv: -kv[1][1]):
        lines.append(f"  {kind:<32} {n:4d} questions {cpu:6.2f} s")
    lines.append("  the most expensive:")
    for cpu, q in questions[:8]:
        lines.append(f"  {ms(cpu)}  {' '.join(q.split())[:100]}")
    return lines


def by_kind(run: dict) -> dict[str, list]:
    kinds: dict[str, list] = defaultdict(lambda: [0, 0.0, 0.0])
    for t in run["trips"]:
        kinds[t["kind"]][0] += t["count"]
        kinds[t["kind"]][1] += t["seconds"]
        kinds[t["kind"]][2] += t.get("target_cpu", 0.0)
    return kinds


def report(before: dict | None, after: dict) -> list[str]:
    """`before` (pyinfra as it comes) may be None (HARDKIT_BENCH_PLAIN=0): only `after` is shown."""
    runs = [("before", before), ("after", after)] if before else [("after", after)]
    lines = [f"no-op redeploy of one nspawn host ({after['unchanged']} operations, {after['changed']} changed)"]
    if before:
        lines.append(f"  pyinfra as it comes:            {before['total']:6.2f} s wall, controller CPU "
                     f"{before['controller_cpu']:5.2f} s, target CPU {before['target_cpu']:5.2f} s")
    lines.append(f"  with hardkit's round-trip cuts: {after['total']:6.2f} s wall, controller CPU "
                 f"{after['controller_cpu']:5.2f} s, target CPU {after['target_cpu']:5.2f} s"
                 + (f"  (x{before['total'] / after['total']:.1f} faster; target <= 5 s)" if before else ""))
    head = "".join(f"   {label:>6} s  tgt CPU" for label, _ in runs)
    lines += ["", f"controller phases               {head}"]
    for phase in after["phases"]:
        lines.append(f"  {phase:<30}" + "".join(f" {run['phases'].get(phase, 0):8.2f} {run['phases_target_cpu'].get(phase, 0):8.2f}"
                                                for _, run in runs))
    lines += ["", "inside pyinfra: SSH round-trips  " + "".join(f"   {label:>6} n       s  tgt CPU" for label, _ in runs)]
    kinds = {label: by_kind(run) for label, run in runs}
    for kind in sorted(set().union(*kinds.values())):
        lines.append(f"  {kind:<30}" + "".join(
            f" {kinds[label].get(kind, [0, 0.0, 0.0])[0]:8d} {kinds[label].get(kind, [0, 0.0, 0.0])[1]:7.2f}"
            f" {kinds[label].get(kind, [0, 0.0, 0.0])[2]:8.2f}" for label, _ in runs))
    for label, run in runs:
        rest = run["pyinfra_inside"] - sum(k[1] for k in kinds[label].values())
        lines.append(f"  planning and Python ({label}):  {rest:6.2f} s of {run['pyinfra_inside']:.2f} s in the deploy file; "
                     f"start-up and connection outside it: {run['phases']['pyinfra process'] - run['pyinfra_inside']:.2f} s")
    lines += ["", "per role: wall s (round-trips) " + "".join(f"   {label:>12}" for label, _ in runs)]
    trips = {label: defaultdict(int) for label, _ in runs}
    for label, run in runs:
        for t in run["trips"]:
            trips[label][t["role"]] += t["count"]
    for role in sorted(runs[0][1]["roles"], key=lambda r: -runs[0][1]["roles"][r]):
        lines.append(f"  {role:<30}" + "".join(f"   {run['roles'].get(role, 0):6.2f} ({trips[label][role]:3d})"
                                                for label, run in runs))
    return lines


def main() -> None:
    if os.geteuid() != 0:
        raise SystemExit("bench/noop_profile.py needs root (it boots a lab target)")
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    if not REUSE:
        lab.down(PREFIX, log=lambda m: None)
    target = None
    try:
        if REUSE:
            from sandbox.lab_inventory import inventory_path
            path = inventory_path(PREFIX)
        else:
            path = lab.up(count=1, prefix=PREFIX, log=lambda m: None)
            inv = load(path)
            first = runner.deploy(inv, inv.hosts, stream=subprocess.DEVNULL)
            if not first.ok:
                raise SystemExit(f"bench: first deploy failed: {[(h.failed, h.error) for h in first.hosts.values()]}")
        target = all_targets(PREFIX)[0]
        if not target_cpu.track(target):
            print("bench: the target's CPU cannot be tracked here (no cpuacct hierarchy): target CPU shows 0",
                  file=sys.stderr)
            target = None
        before = phases_of_one_deploy(path, plain=True, target=target) if PLAIN else None
        if not REUSE:
            phases_of_one_deploy(path, plain=False, target=target)  # the batch learns this host's questions
        after = phases_of_one_deploy(path, plain=False, target=target)
        costs = host_costs(path, target) if target else None
    finally:
        if target:
            target_cpu.untrack(target)
        if not REUSE:
            lab.down(PREFIX, log=lambda m: None)
    lines = report(before, after) + (host_report(costs) if costs else [])
    lines.append(f"(load average {os.getloadavg()[0]:.1f} at the end, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})")
    print("\n".join(lines))
    (OUT_DIR / "noop_profile.json").write_text(json.dumps({"before": before, "after": after, "host": costs}, indent=2))
    (OUT_DIR / "noop_profile.md").write_text("```\n" + "\n".join(lines) + "\n```\n")


if __name__ == "__main__":
    main()
