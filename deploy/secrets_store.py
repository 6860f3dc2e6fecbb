"""The repository's encrypted secrets: `secrets/<env>/<name>.age`, one recipient list per environment.

Every value is an age file (pyrage) encrypted to the public keys in `secrets/<env>/recipients.txt`
(one `age1...` key a line; `#` comments and blank lines allowed). Values are
decrypted only into this process's memory; nothing here ever writes plaintext to disk. An operator
decrypts with an age identity file (see `identity_path`).

Every problem an operator can fix raises `SecretsError` with one line naming the file and what to do.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pyrage

from roles.secrets_data import NAME_RE

REPO_ROOT = Path(__file__).resolve().parent.parent

#: Where environments live unless HARDKIT_SECRETS_DIR says otherwise: `secrets/` in the repository.
DEFAULT_ROOT = REPO_ROOT / "secrets"
#: The operator's age identity unless --identity or HARDKIT_AGE_IDENTITY says otherwise
#: (created 0600 in a 0700 folder by `hardkit secrets init`).
DEFAULT_IDENTITY = Path("~/.config/hardkit/age-identity.txt")
RECIPIENTS_FILE = "recipients.txt"
SUFFIX = ".age"


class SecretsError(Exception):
    """A problem the operator can fix; the message is one line saying which file and what to do."""


def secrets_root() -> Path:
    return Path(os.environ.get("HARDKIT_SECRETS_DIR") or DEFAULT_ROOT)


def identity_path(given: str | Path | None = None) -> Path:
    """--identity FILE, else $HARDKIT_AGE_IDENTITY, else DEFAULT_IDENTITY."""
    return Path(given or os.environ.get("HARDKIT_AGE_IDENTITY") or DEFAULT_IDENTITY).expanduser()


def check_name(kind: str, name: str) -> str:
    if not NAME_RE.match(name or ""):
        raise SecretsError(f"{kind} name {name!r} is not allowed: use lowercase letters, digits, '-' and '_' "
                           "(at most 64, starting with a letter or digit)")
    return name


# --- identities ----------------------------------------------------------------------------------

@dataclass
class Identity:
    path: Path
    keys: list  # pyrage x25519 identities

    @property
    def public_keys(self) -> list[str]:
        return [str(k.to_public()) for k in self.keys]


def load_identity(path: Path) -> Identity:
    """Read an age identity file (AGE-SECRET-KEY-1... lines); refuse one that others can read."""
    if not path.is_file():
        raise SecretsError(f"no age identity at {path}: run `hardkit secrets init ENV` to create one, "
                           "or pass --identity FILE (or set HARDKIT_AGE_IDENTITY)")
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise SecretsError(f"age identity {path} is readable by others (mode {mode:04o}): run `chmod 600 {path}`")
    keys = []
    for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            keys.append(pyrage.x25519.Identity.from_str(line))
        except pyrage.IdentityError:
            raise SecretsError(f"{path}:{n} is not an age identity (AGE-SECRET-KEY-1...): "
                               "pass the identity file from `hardkit secrets init` or `age-keygen`") from None
    if not keys:
        raise SecretsError(f"{path} holds no age identity: pass the file from `hardkit secrets init` or `age-keygen`")
    return Identity(path, keys)


def create_identity(path: Path) -> Identity:
    """A new x25519 identity at `path`: the folder 0700, the file 0600 (created so, never chmod-ed later)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = pyrage.x25519.Identity.generate()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(f"# hardkit age identity; public key: {key.to_public()}\n{key}\n")
    return Identity(path, [key])


# --- recipients ----------------------------------------------------------------------------------

def parse_recipient(text: str):
    """An age X25519 recipient from its public key (`age1...`, as `age-keygen -y` prints it)."""
    text = text.strip()
    try:
        return pyrage.x25519.Recipient.from_str(text)
    except pyrage.RecipientError:
        raise ValueError(f"{text[:40]!r} is not an age public key (age1..., from `age-keygen -y`)") from None


# --- an environment ------------------------------------------------------------------------------

@dataclass
class Env:
    """One environment's folder: its recipients and its encrypted values."""
    name: str
    root: Path

    @property
    def folder(self) -> Path:
        return self.root / self.name

    @property
    def recipients_file(self) -> Path:
        return self.folder / RECIPIENTS_FILE

    def file(self, secret: str) -> Path:
        return self.folder / (check_name("secret", secret) + SUFFIX)

    def require(self) -> Env:
        if not self.recipients_file.is_file():
            raise SecretsError(f"no secrets environment {self.name!r} ({self.recipients_file} missing): "
                               f"run `hardkit secrets init {self.name}`")
        return self

    def recipient_lines(self) -> list[str]:
        lines = []
        for n, line in enumerate(self.require().recipients_file.read_text().splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            try:
                parse_recipient(line)
            except ValueError as e:
                raise SecretsError(f"{self.recipients_file}:{n}: {e}; fix or remove that line") from None
            lines.append(line)
        if not lines:
            raise SecretsError(f"{self.recipients_file} lists no recipient: add one with "
                               f"`hardkit secrets add-recipient {self.name} KEY`")
        return lines

    def names(self) -> list[str]:
        """The secrets stored in this environment, sorted."""
        return sorted(p.name[:-len(SUFFIX)] for p in self.require().folder.glob("*" + SUFFIX) if p.is_file())

    def decrypt(self, secret: str, identity: Identity) -> bytes:
        path = self.file(secret)
        if not path.is_file():
            raise SecretsError(f"no secret {secret!r} in {self.folder}: store it with "
                               f"`hardkit secrets set {self.name} {secret}`")
        try:
            return pyrage.decrypt(path.read_bytes(), identity.keys)
        except pyrage.DecryptError as e:
            raise SecretsError(self._why_not(path, identity, str(e))) from None

    def _why_not(self, path: Path, identity: Identity, detail: str) -> str:
        if "no matching keys" not in detail.lower():
            return f"{path} cannot be decrypted ({detail}): it is damaged; restore it from git or set it again"
        if not self.lists(identity):
            return self._not_a_recipient(identity)
        return (f"{path} is encrypted to other recipients than {self.recipients_file} lists (yours included): "
                f"an operator who can decrypt it must run `hardkit secrets rotate {self.name}`")

    def lists(self, identity: Identity) -> bool:
        return bool(set(self.recipient_lines()) & set(identity.public_keys))

    def _not_a_recipient(self, identity: Identity) -> str:
        key = identity.public_keys[0]
        return (f"your identity {identity.path} ({key}) is not a recipient in {self.recipients_file}: pass the "
                f"right --identity, or have an operator who can decrypt run "
                f"`hardkit secrets add-recipient {self.name} {key}`")

    def decrypt_all(self, identity: Identity) -> dict[str, bytes]:
        """Every value, or SecretsError listing every file that failed (one line each; one line in all
        when the identity is not a recipient of the environment)."""
        names = self.names()
        if names and not self.lists(identity):
            raise SecretsError(self._not_a_recipient(identity))
        values, problems = {}, []
        for secret in names:
            try:
                values[secret] = self.decrypt(secret, identity)
            except SecretsError as e:
                problems.append(str(e))
        if problems:
            raise SecretsError("\n".join(problems))
        return values

    def encrypt(self, secret: str, value: bytes) -> Path:
        """Write `value` encrypted to the current recipients, atomically (a reader sees old or new)."""
        recipients = [parse_recipient(line) for line in self.recipient_lines()]
        path = self.file(secret)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(pyrage.encrypt(value, recipients))
        os.replace(tmp, path)
        return path

    def remove(self, secret: str) -> None:
        path = self.file(secret)
        if not path.is_file():
            raise SecretsError(f"no secret {secret!r} in {self.folder}")
        path.unlink()


def open_env(name: str, root: Path | None = None) -> Env:
    return Env(check_name("environment", name), Path(root or secrets_root()))
