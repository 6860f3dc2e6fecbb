"""`hardkit`: the operator's command line.

    hardkit sandbox image | up | down | status | ssh      the local lab of disposable Debian 12 VPSs
    hardkit deploy INVENTORY [--limit GROUP|HOST] [--dry] [--json] [--identity FILE] [--parallel N]
                   [--batch N|P%] [--max-fail N] [-v]
    hardkit verify INVENTORY [--limit GROUP|HOST] [--parallel N] [--report-dir DIR] [--junit FILE]
    hardkit verify INVENTORY ... [--waivers FILE] [--compare PREVIOUS.json]   exit 0 pass, 1 fail, 2 usage, 3 unreachable
    hardkit audit INVENTORY ...                          verify plus ssh-audit and systemd-analyze security
    hardkit drift INVENTORY [--limit ...]               what a deploy would change + controls failing now
    hardkit controls [--format md|json]                  the control catalog (catalog/controls.toml)
    hardkit status INVENTORY [--limit GROUP|HOST] [--json]   what is deployed where, and drift
    hardkit bot status|halt|flatten|reset|logs|rollback INVENTORY [--limit GROUP|HOST]
    hardkit bot dashboard INVENTORY --host HOST [--port P]
    hardkit secrets init | set | edit | show-recipients | add-recipient | rotate ENV   (deploy/secrets_cli.py)

Every error an operator can fix is printed as a sentence and exits non-zero; a traceback
means a bug in hardkit.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from deploy import secrets_cli, users_cli

REPO_ROOT = Path(__file__).resolve().parent.parent

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_BAD_INPUT
    from deploy.inventory import InventoryError
    from deploy.secrets_store import SecretsError
    from roles.bot_release import ReleaseError
    from sandbox.errors import LabError

    try:
        return args.func(args)
    except InventoryError as e:
        print(f"error: {e.render()}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except SecretsError as e:
        for line in str(e).splitlines():
            print(f"error: {line}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except LabError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_FAILED
    except ReleaseError as e:  # the controller could not build the bot's release: no host was touched
        print(f"error: the bot's release could not be built, no host was touched: {e}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hardkit", description="Provision and verify hardened Debian 12 VPSs.")
    sub = p.add_subparsers(metavar="COMMAND")

    sb = sub.add_parser("sandbox", help="the local lab of disposable Debian 12 VPSs").add_subparsers(metavar="VERB")
    s = sb.add_parser("image", help="build or refresh the cached Debian 12 lab image")
    s.add_argument("--force", action="store_true", help="rebuild even if the recipe did not change")
    s.set_defaults(func=cmd_sandbox_image)
    s = sb.add_parser("up", help="boot pristine targets; prints the inventory path it wrote")
    s.add_argument("--count", type=int, default=1)
    s.add_argument("--tier", choices=["nspawn", "vm"], default="nspawn")
    s.add_argument("--name", default="lab", help="lab name (prefix of target names), default 'lab'")
    s.set_defaults(func=cmd_sandbox_up)
    s = sb.add_parser("down", help="remove targets and everything they made")
    g = s.add_mutually_exclusive_group(required=True)
    g.add_argument("--name", help="the lab to remove")
    g.add_argument("--all", action="store_true", help="remove every lab")
    s.set_defaults(func=cmd_sandbox_down)
    s = sb.add_parser("status", help="list lab targets")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_sandbox_status)
    s = sb.add_parser("ssh", help="ssh into a target: hardkit sandbox ssh NAME [-- CMD]")
    s.add_argument("target")
    s.add_argument("--user", default=None, help="log in as this user (default: the admin if deployed, else root)")
    s.add_argument("command", nargs=argparse.REMAINDER)
    s.set_defaults(func=cmd_sandbox_ssh)

    s = sub.add_parser("deploy", help="converge every host of an inventory")
    s.add_argument("inventory")
    s.add_argument("--limit", help="only these groups or hosts (comma-separated)")
    s.add_argument("--dry", action="store_true", help="show what would change, change nothing")
    s.add_argument("--json", action="store_true", help="print the run's results as JSON on stdout")
    s.add_argument("--identity", default=None, help="age identity that decrypts the hosts' secrets_env "
                   "(default $HARDKIT_AGE_IDENTITY, else ~/.config/hardkit/age-identity.txt)")
    s.add_argument("--parallel", type=int, default=None, help="deploy at most N hosts at once (default: all of a batch)")
    s.add_argument("--batch", default=None, help="rolling: N hosts or P%% at a time, each batch verified before the next")
    s.add_argument("--max-fail", type=int, default=0, help="with --batch: stop when more hosts of a batch fail (default 0)")
    s.add_argument("-v", "--verbose", action="store_true", help="show pyinfra's own lines instead of per-host progress")
    s.set_defaults(func=cmd_deploy)

    verify_args = [
        (("inventory",), {}),
        (("--limit",), {"help": "only these groups or hosts (comma-separated)"}),
        (("--report-dir",), {"default": None,
                             "help": "where compliance.json/.md/.xml/.html go (default reports/<inventory>)"}),
        (("--junit",), {"default": None, "help": "also write the JUnit XML (a testcase per control and host) here"}),
        (("-k",), {"dest": "select", "default": None, "help": "only checks matching this pytest expression"}),
        (("--waivers",), {"default": None, "help": "waiver file (default tests/compliance/waivers.toml)"}),
        (("--parallel",), {"type": int, "default": None,
                           "help": "check at most N hosts at once, one pytest each (default: 2 per CPU, at least 4)"}),
        (("--compare",), {"default": None, "metavar": "PREVIOUS.json",
                          "help": "list the controls whose status changed since this earlier report"}),
    ]
    for command, text, auditors in (
            ("verify", "run the compliance checks against every host of an inventory", False),
            ("audit", "verify plus the external auditors (ssh-audit, systemd-analyze security), same report", True)):
        s = sub.add_parser(command, help=text)
        for flags, options in verify_args:
            s.add_argument(*flags, **options)
        if auditors:
            s.add_argument("--keep", action="store_true", help="leave Lynis installed afterwards")
        s.set_defaults(func=cmd_verify, auditors=auditors, keep=False)

    s = sub.add_parser("drift", help="per host: what a deploy would change and which controls fail now; "
                       "changes nothing (exit 1 on drift)")
    s.add_argument("inventory")
    s.add_argument("--limit", help="only these groups or hosts (comma-separated)")
    s.add_argument("--identity", default=None, help="age identity for the hosts' secrets_env (as for deploy)")
    s.set_defaults(func=cmd_drift)

    s = sub.add_parser("controls", help="print the control catalog: ids, titles, references, tiers")
    s.add_argument("--format", choices=["md", "json"], default="md")
    s.set_defaults(func=cmd_controls)

    s = sub.add_parser("status", help="what is deployed where (commit, bot release, time, operator) and drift")
    s.add_argument("inventory")
    s.add_argument("--limit", help="only these groups or hosts (comma-separated)")
    s.add_argument("--json", action="store_true", help="one JSON object, keyed by host")
    s.set_defaults(func=cmd_status)

    s = sub.add_parser("restore", help="disaster recovery: deploy NEW and restore a lost host's bot onto it from "
                                       "its encrypted backups (deploy/restore.py)")
    s.add_argument("inventory")
    s.add_argument("--host", required=True, help="the new host (its backup_to names the repository to restore)")
    s.add_argument("--from", dest="source", required=True, help="the backup server (a host with backup_server: true)")
    pick = s.add_mutually_exclusive_group()
    pick.add_argument("--from-host", help="the lost host whose newest snapshot to restore (its name in the "
                                          "repository; default: the newest snapshot not taken by NEW itself)")
    pick.add_argument("--snapshot", help="a snapshot id (default: the lost host's newest)")
    s.set_defaults(func=cmd_restore)

    bot = sub.add_parser("bot", help="operate the bots of an inventory over SSH").add_subparsers(metavar="VERB")
    verbs = {
        "status": "state, equity, exposure, positions and orders of each host's bot",
        "halt": "latch HALTED on every selected host (in parallel) and confirm it",
        "flatten": "halt, cancel, sell every position and verify flat on the exchange",
        "reset": "back to ACTIVE (a new risk epoch) after a halt",
        "logs": "the bot's journal",
        "rollback": "go back to the previous installed release and restart",
    }
    for verb, text in verbs.items():
        s = bot.add_parser(verb, help=text)
        s.add_argument("inventory")
        s.add_argument("--limit", help="only these groups or hosts (comma-separated)")
        s.add_argument("--json", action="store_true", help="one JSON object, keyed by host")
        if verb == "halt":
            s.add_argument("--reason", default="operator halt (hardkit bot halt)")
        if verb == "flatten":
            s.add_argument("--timeout", type=float, default=30.0)
        if verb == "reset":
            s.add_argument("--note", default="operator reset (hardkit bot reset)")
            s.add_argument("--new-day", action="store_true", help="also start a new daily-loss anchor")
        if verb == "logs":
            s.add_argument("-n", "--lines", type=int, default=50)
        s.set_defaults(func=cmd_bot, verb=verb)
    s = bot.add_parser("dashboard", help="serve one host's risk dashboard on this machine's loopback (over SSH)")
    s.add_argument("inventory")
    s.add_argument("--host", required=True, help="the host whose bot to show")
    s.add_argument("--port", type=int, default=0, help="local port (default: any free port)")
    s.set_defaults(func=cmd_bot_dashboard)
    secrets_cli.add_parser(sub)
    users_cli.add_parser(sub)
    return p


# --- sandbox -------------------------------------------------------------------------------------

def cmd_sandbox_image(args) -> int:
    from sandbox import image

    image.build(force=args.force)
    return EXIT_OK


def cmd_sandbox_up(args) -> int:
    from sandbox import lab

    path = lab.up(count=args.count, tier=args.tier, prefix=args.name, log=lambda m: print(m, file=sys.stderr))
    print(path)
    return EXIT_OK


def cmd_sandbox_down(args) -> int:
    from sandbox import lab

    n = lab.down(None if args.all else args.name, log=lambda m: print(m, file=sys.stderr))
    print(f"removed {n} target(s)", file=sys.stderr)
    return EXIT_OK


def cmd_sandbox_status(args) -> int:
    from sandbox import lab

    rows = lab.status()
    if args.json:
        print(json.dumps(rows, indent=2))
    elif not rows:
        print("no lab targets")
    else:
        for r in rows:
            print(f"{r['name']:<12} {r['tier']:<7} {r['ssh']:<17} {r['lab']:<36} "
                  f"{'running' if r['running'] else 'STOPPED'}")
    return EXIT_OK


def cmd_sandbox_ssh(args) -> int:
    from sandbox import lab

    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    login = _lab_login(args.target)
    lab.exec_ssh(args.target, command, user=args.user or login.user, port=login.port)
    return EXIT_OK  # not reached: exec


def _lab_login(name: str):
    """How a deploy would log in: the admin once deployed, root before (as for any VPS), on sshd's port."""
    from deploy import connect
    from deploy.inventory import load
    from sandbox import lab, lab_inventory

    t = lab.find(name)
    inv = load(lab_inventory.inventory_path(t.prefix))
    host = next(h for h in inv.hosts if h.name == name)
    return connect.resolve(host)


def _inventory_label(path: Path) -> str:
    """A lab's inventory is always `inventory.py`: name its reports after the lab folder instead."""
    return path.resolve().parent.name if path.stem == "inventory" else path.stem


# --- deploy and verify ---------------------------------------------------------------------------

def cmd_deploy(args) -> int:
    from deploy import fleet
    from deploy.inventory import InventoryError, load
    from deploy.progress import HostProgress

    problems = []
    try:
        inv = load(args.inventory)
        hosts = inv.limit(args.limit)
    except InventoryError as e:
        inv, hosts, problems = None, [], list(e.problems)
    problems += fleet.input_problems(args.batch, args.max_fail, args.parallel, len(hosts))
    if problems:  # every problem of the inventory and of the options, before any host is touched
        from deploy.inventory import InventoryError as _E

        raise _E(Path(args.inventory), problems)
    stream = sys.stderr if args.verbose else HostProgress(sys.stderr)
    result = fleet.deploy(inv, hosts, batch=args.batch, max_fail=args.max_fail, dry=args.dry, parallel=args.parallel,
                          identity=args.identity, stream=stream, progress=lambda m: print(m, file=sys.stderr))
    if args.json:
        print(json.dumps(fleet.as_json(result), indent=2))
    print("\nhardkit deploy" + (" (dry run: nothing changed)" if args.dry else "") + ":", file=sys.stderr)
    for line in fleet.summary(result, dry=args.dry):
        print("  " + line, file=sys.stderr)
    for run in result.runs:
        for name, h in sorted(run.hosts.items()):
            for label, d in (("credentials", h.credentials), ("TOTP seeds", h.totp_seeds)):
                if d and d.changed:
                    print(f"  {name} {label}: {'would send' if args.dry else 'sent'} {', '.join(d.sent) or '-'}"
                          f"; {'would remove' if args.dry else 'removed'} {', '.join(d.removed) or '-'}",
                          file=sys.stderr)
            for failure in h.failed:  # the table shows the start of the first one; here each in full
                print(f"  {name} failed: {failure}", file=sys.stderr)
    return EXIT_OK if result.ok else EXIT_FAILED


def cmd_restore(args) -> int:
    from deploy import restore
    from deploy.inventory import load

    inv = load(args.inventory)
    restore.check(inv, args.host, args.source)
    try:
        outcome = restore.restore(inv, args.host, args.snapshot, say=lambda m: print(m, file=sys.stderr),
                                  from_host=args.from_host)
    except restore.RestoreError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_FAILED
    st = outcome.status
    print(json.dumps({"host": args.host, "snapshot": outcome.snapshot, "restored": outcome.restored,
                      "state": st.get("state"),
                      "reason": st.get("reason"), "positions": st.get("positions", []),
                      "config_differs_from_backup": outcome.config_differs,
                      "timings_s": {name: round(t, 1) for name, t in outcome.timings}}, indent=2))
    if st.get("state") == "ACTIVE":
        print(f"{args.host}: restored; reconciliation clean, trading resumed", file=sys.stderr)
    else:
        print(f"{args.host}: restored; the bot is {st.get('state')} and does not trade: {st.get('reason')}",
              file=sys.stderr)
    return EXIT_OK


def cmd_verify(args) -> int:
    from deploy import verify_run
    from deploy.inventory import InventoryError, load

    problems = []
    try:  # bad input is reported before any connection, every problem at once
        inv = load(args.inventory)
        hosts = inv.limit(args.limit)
    except InventoryError as e:
        problems += e.render().splitlines()
    problems += verify_run.input_problems(args.waivers)
    if args.parallel is not None and args.parallel < 1:
        problems.append(f"--parallel must be 1 or more, not {args.parallel}")
    previous = None
    if args.compare:
        previous, why = verify_run.read_previous(args.compare)
        problems += [why] if why else []
    if problems:
        for line in problems:
            print(f"error: {line}", file=sys.stderr)
        return EXIT_BAD_INPUT
    label = _inventory_label(Path(args.inventory))
    report_dir = Path(args.report_dir or REPO_ROOT / "reports" / label)
    doc, rc = verify_run.run(Path(args.inventory), label, report_dir, select=args.select, waivers=args.waivers,
                             hosts=[h.name for h in hosts], parallel=args.parallel, auditors=args.auditors,
                             keep_lynis=args.keep)
    if doc is not None:
        kept = verify_run.keep(report_dir, doc)
        print(f"kept: {kept}")
        if args.junit:
            shutil.copyfile(report_dir / "compliance.xml", args.junit)
        if previous is not None:
            changed = verify_run.changes(previous, doc)
            print(f"changed since {args.compare}: {len(changed)}")
            for line in changed:
                print(f"  {line}")
    return verify_run.exit_code(doc, rc)


def cmd_drift(args) -> int:
    from deploy import drift
    from deploy.inventory import load

    inv = load(args.inventory)
    return drift.run(inv, inv.limit(args.limit), _inventory_label(Path(args.inventory)), identity=args.identity)


def cmd_controls(args) -> int:
    from deploy import catalog

    try:
        controls = catalog.load()
    except catalog.CatalogError as e:
        for line in str(e).splitlines():
            print(f"error: {line}", file=sys.stderr)
        return EXIT_BAD_INPUT
    sys.stdout.write(catalog.to_json(controls) if args.format == "json" else catalog.to_markdown(controls))
    return EXIT_OK


def cmd_status(args) -> int:
    from deploy import status
    from deploy.inventory import load

    inv = load(args.inventory)
    return status.run(inv.limit(args.limit), as_json=args.json)


# --- bot ------------------------------------------------------------------------------------------

def cmd_bot(args) -> int:
    from deploy import botctl
    from deploy.inventory import load

    inv = load(args.inventory)
    return botctl.run(inv.limit(args.limit), args.verb, args)


def cmd_bot_dashboard(args) -> int:
    from deploy import botctl, connect
    from deploy.inventory import load

    inv = load(args.inventory)
    host = next((h for h in inv.hosts if h.name == args.host), None)
    if host is None:
        print(f"error: no host {args.host!r} in {args.inventory}", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        return botctl.dashboard(host, port=args.port)
    except connect.LoginError as e:
        print(f"error: {e}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
