"""`hardkit secrets ...`: manage an environment's age-encrypted secrets from the controller.

    init ENV                 create secrets/ENV with your public key as its recipient (and your identity if missing)
    set ENV NAME             store a value read from stdin (no echo on a terminal; never from the command line)
    edit ENV NAME            edit a value in $EDITOR (plaintext only in a private memory folder)
    show-recipients ENV      the public keys the environment is encrypted to
    add-recipient ENV KEY    add a public key, then re-encrypt every value so its owner can read them
    rotate ENV               re-encrypt every value to recipients.txt as it is now (after removing a key)

Values are stored without the one final newline a terminal, `echo` or an editor adds. `rotate`
never changes a value: someone removed from recipients.txt may have kept copies, so change
such values at their source and store them again with `set`.
"""

from __future__ import annotations

import getpass
import sys

from deploy.secrets_store import (Env, SecretsError, check_name, create_identity, identity_path, load_identity,
                                  open_env, parse_recipient)

EXIT_OK = 0


def add_parser(sub) -> None:
    verbs = sub.add_parser("secrets", help="age-encrypted secrets per environment (secrets/ENV/*.age)"
                           ).add_subparsers(metavar="VERB")

    def verb(name, func, help_text, *, secret=False, identity=True):
        s = verbs.add_parser(name, help=help_text)
        s.add_argument("env", metavar="ENV")
        if secret:
            s.add_argument("secret", metavar="NAME")
        if identity:  # set and show-recipients need only the public keys
            s.add_argument("--identity", default=None,
                           help="your age identity file (default $HARDKIT_AGE_IDENTITY, else ~/.config/hardkit/"
                                "age-identity.txt)")
        s.set_defaults(func=func)
        return s

    verb("init", cmd_init, "create secrets/ENV encrypted to your key (creating your identity if missing)")
    verb("set", cmd_set, "store NAME's value, read from stdin", secret=True, identity=False)
    verb("edit", cmd_edit, "edit NAME's value in $EDITOR (plaintext only in a private memory folder)", secret=True)
    verb("show-recipients", cmd_show_recipients, "list the public keys ENV is encrypted to", identity=False)
    verb("add-recipient", cmd_add_recipient, "add a public key and re-encrypt every value to it").add_argument(
        "key", metavar="KEY", help="an age public key (age1..., from `age-keygen -y`)")
    verb("rotate", cmd_rotate, "re-encrypt every value to the recipients listed now")


def _say(message: str) -> None:
    print(message, file=sys.stderr)


def cmd_init(args) -> int:
    env = open_env(args.env)
    if env.recipients_file.exists():
        raise SecretsError(f"{env.recipients_file} already exists: add people with "
                           f"`hardkit secrets add-recipient {env.name} KEY`")
    path = identity_path(args.identity)
    if path.exists():
        identity = load_identity(path)
    else:
        identity = create_identity(path)
        _say(f"created your age identity {path} (0600): back it up; whoever holds it can read these secrets")
    env.folder.mkdir(parents=True, exist_ok=True)
    env.recipients_file.write_text(
        f"# Public keys that can decrypt secrets/{env.name}/*.age, one a line (age1...).\n"
        f"# After removing one, run `hardkit secrets rotate {env.name}` and change the values it could read.\n"
        f"{identity.public_keys[0]}\n")
    _say(f"created {env.recipients_file} with your public key {identity.public_keys[0]}")
    return EXIT_OK


def read_value(label: str) -> bytes:
    """The value from stdin: asked twice without echo on a terminal; one final newline dropped."""
    if sys.stdin.isatty():
        first = getpass.getpass(f"value for {label} (not echoed): ")
        if getpass.getpass("again: ") != first:
            raise SecretsError(f"the two entries for {label} differ: nothing stored")
        value = first.encode()
    else:
        value = strip_final_newline(sys.stdin.buffer.read())
    if not value:
        raise SecretsError(f"empty value for {label}: nothing stored (pipe the value on stdin or type it)")
    return value


def strip_final_newline(value: bytes) -> bytes:
    for end in (b"\r\n", b"\n"):
        if value.endswith(end):
            return value[:-len(end)]
    return value


def cmd_set(args) -> int:
    env = open_env(args.env).require()
    check_name("secret", args.secret)
    env.recipient_lines()  # a broken recipients file is reported before the value is asked for
    path = env.encrypt(args.secret, read_value(f"{env.name}/{args.secret}"))
    _say(f"stored {path}")
    return EXIT_OK


def cmd_edit(args) -> int:
    from deploy.secrets_edit import edit_value

    env = open_env(args.env).require()
    identity = load_identity(identity_path(args.identity))
    old = env.decrypt(args.secret, identity) if env.file(args.secret).exists() else b""
    new = strip_final_newline(edit_value(args.secret, old))
    if new == old:
        _say(f"{env.file(args.secret)} unchanged")
    elif not new:
        raise SecretsError(f"the edited value of {env.name}/{args.secret} is empty: nothing stored")
    else:
        _say(f"stored {env.encrypt(args.secret, new)}")
    return EXIT_OK


def cmd_show_recipients(args) -> int:
    for line in open_env(args.env).recipient_lines():
        print(line)
    return EXIT_OK


def cmd_add_recipient(args) -> int:
    env = open_env(args.env)
    try:
        parse_recipient(args.key)
    except ValueError as e:
        raise SecretsError(f"{e}: nothing changed in {env.recipients_file}") from None
    if args.key.strip() in env.recipient_lines():
        raise SecretsError(f"{env.recipients_file} already lists that key")
    values = _decrypt_everything(env, args)  # before recipients.txt changes: a failure leaves all as it was
    with env.recipients_file.open("a") as f:
        f.write(args.key.strip() + "\n")
    _reencrypt(env, values)
    _say(f"added the key to {env.recipients_file} and re-encrypted {len(values)} value(s) to it")
    return EXIT_OK


def cmd_rotate(args) -> int:
    env = open_env(args.env)
    values = _decrypt_everything(env, args)
    _reencrypt(env, values)
    _say(f"re-encrypted {len(values)} value(s) in {env.folder} to {len(env.recipient_lines())} recipient(s); "
         "if you removed a recipient, change the values they could read and `hardkit secrets set` them")
    return EXIT_OK


def _decrypt_everything(env: Env, args) -> dict[str, bytes]:
    env.require()
    return env.decrypt_all(load_identity(identity_path(args.identity))) if env.names() else {}


def _reencrypt(env: Env, values: dict[str, bytes]) -> None:
    for name, value in values.items():
        env.encrypt(name, value)
