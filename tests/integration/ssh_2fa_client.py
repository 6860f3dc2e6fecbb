"""One SSH login attempt driven step by step with paramiko, run inside a lab client's namespace.

    python -m tests.integration.ssh_2fa_client ADDRESS USER [--key FILE] [--code CODE]
                                               [--password PW] [--interactive-first]

Prints one JSON object: how far the login got (`authenticated`), what the server still asked for
(`remaining`), the prompts keyboard-interactive showed, the refusal if any, and on success the
output of `id -un; sudo -n true && echo sudo-ok`. The lab tests read it; nothing else does.
"""

from __future__ import annotations

import argparse
import json
import socket

import paramiko

TIMEOUT = 15


def attempt(args) -> dict:
    out = {"authenticated": False, "remaining": [], "prompts": [], "refused": "", "stdout": ""}
    sock = socket.create_connection((args.address, 22), timeout=TIMEOUT)
    transport = paramiko.Transport(sock)
    try:
        transport.start_client(timeout=TIMEOUT)

        def answer(title, instructions, prompts):
            out["prompts"] += [p for p, _ in prompts]
            return [args.code or "" for _ in prompts]

        try:
            if args.interactive_first:
                transport.auth_interactive(args.user, answer)
            if args.password is not None:
                out["remaining"] = transport.auth_password(args.user, args.password) or []
            if args.key:
                out["remaining"] = transport.auth_publickey(args.user, paramiko.PKey.from_path(args.key)) or []
            if args.code is not None and not transport.is_authenticated():
                out["remaining"] = transport.auth_interactive(args.user, answer) or []
        except paramiko.BadAuthenticationType as e:
            out["refused"] = f"method not offered; server allows {sorted(e.allowed_types)}"
        except paramiko.AuthenticationException as e:
            out["refused"] = f"{type(e).__name__}: {e}"
        out["authenticated"] = transport.is_authenticated()
        if out["authenticated"]:
            chan = transport.open_session(timeout=TIMEOUT)
            chan.exec_command("id -un; sudo -n true && echo sudo-ok")
            out["stdout"] = chan.makefile("r").read().decode()
            chan.recv_exit_status()
    finally:
        transport.close()
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("address")
    p.add_argument("user")
    p.add_argument("--key")
    p.add_argument("--code")
    p.add_argument("--password")
    p.add_argument("--interactive-first", action="store_true", help="try keyboard-interactive before any key")
    print(json.dumps(attempt(p.parse_args())))


if __name__ == "__main__":
    main()
