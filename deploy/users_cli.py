"""`hardkit users add-totp NAME --env ENV`: enrol a person's authenticator app.

Makes a random seed, stores it age-encrypted as secrets/ENV/totp-NAME.age (the next `hardkit
deploy` delivers it to every host whose inventory lists NAME as a totp admin), and shows it once:
as a QR code drawn in the terminal (segno) and as the otpauth:// URI. The seed is never written
anywhere in clear; a pipe gets it only when asked with --to-pipe (to hand it to a password manager).
`--replace` re-enrols (a lost phone): the old seed stops working at the next deploy.
"""

from __future__ import annotations

import io
import sys

from deploy.secrets_store import SecretsError, open_env
from deploy.totp_seeds import new_seed, otpauth_uri
from roles.data import is_username
from roles.second_factor_data import seed_name

EXIT_OK = 0
#: The account name shown in the authenticator app is "ISSUER:NAME".
DEFAULT_ISSUER = "hardkit"


def add_parser(sub) -> None:
    verbs = sub.add_parser("users", help="people's second factor (TOTP enrolment)").add_subparsers(metavar="VERB")
    s = verbs.add_parser("add-totp", help="make NAME's TOTP seed, store it encrypted, show it once as a QR code")
    s.add_argument("name", metavar="NAME", help="the person's account (a totp entry of second_factor_admins)")
    s.add_argument("--env", required=True, help="the secrets environment the hosts read (their secrets_env)")
    s.add_argument("--replace", action="store_true", help="replace an existing seed (re-enrolment, lost phone)")
    s.add_argument("--issuer", default=DEFAULT_ISSUER, help=f"name shown in the app (default {DEFAULT_ISSUER})")
    s.add_argument("--to-pipe", action="store_true", help="print even when stdout is not a terminal")
    s.set_defaults(func=cmd_add_totp)


def cmd_add_totp(args) -> int:
    problems = []
    bad_name = is_username(args.name) or (args.name == "root" and "must not be root")
    if bad_name:
        problems.append(f"NAME {bad_name}")
    if not (args.to_pipe or sys.stdout.isatty()):
        problems.append("stdout is not a terminal: the seed is shown only on a terminal (or pass --to-pipe)")
    try:
        env = open_env(args.env).require()
        env.recipient_lines()
        if not bad_name and env.file(seed_name(args.name)).exists() and not args.replace:
            problems.append(f"{env.file(seed_name(args.name))} exists: {args.name} is enrolled; pass --replace "
                            "to re-enrol (the old seed stops working at the next deploy)")
    except SecretsError as e:
        problems.append(str(e))
    if problems:
        raise SecretsError("\n".join(problems))
    seed = new_seed()
    path = env.encrypt(seed_name(args.name), seed.encode())
    uri = otpauth_uri(args.name, seed, args.issuer)
    print(f"Scan with {args.name}'s authenticator app (shown once; not stored in clear anywhere):")
    print(terminal_qr(uri))
    print(uri)
    print(f"stored encrypted as {path}; run `hardkit deploy` to put it on the hosts", file=sys.stderr)
    return EXIT_OK


def terminal_qr(text: str) -> str:
    """The QR code of `text` drawn with block characters (two modules per character row)."""
    import segno

    out = io.StringIO()
    segno.make(text, error="m").terminal(out=out, compact=True)
    return out.getvalue()
