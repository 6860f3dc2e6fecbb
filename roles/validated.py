"""Writing a config file only after its real validator accepted it.

pyinfra's `files.put`/`files.template` have no `validate=`: a bad file would go live and break
the service (sudo, sshd...). Here the new text goes to a staged copy next to the target, the
validator runs on that copy, and only then is it renamed over the live file (atomic, same
filesystem). A failed validation removes the staged copy and fails the operation.
"""

from __future__ import annotations

import hashlib
import shlex
from io import BytesIO

from pyinfra.api import FileUploadCommand, StringCommand, operation
from pyinfra.facts.files import File, Sha256File


@operation()
def validated_put(content: str, dest: str, validate: str, mode: str = "644", user: str = "root",
                  group: str = "root"):
    """
    Put `content` at `dest` if `validate` (with `{path}` = the staged copy) accepts it.

    + content: the file's full text
    + dest: the live path
    + validate: the validator's command line; `{path}` is replaced by the staged copy's path
    + mode, user, group: ownership and permissions of the live file
    """
    from pyinfra import host

    same = host.get_fact(Sha256File, path=dest) == hashlib.sha256(content.encode()).hexdigest()
    info = host.get_fact(File, path=dest) if same else None
    # pyinfra reports modes as the octal digits read as a decimal int (0o440 -> 440).
    if same and info and info.get("user") == user and info.get("group") == group \
            and info.get("mode") == int(mode):
        host.noop(f"{dest} is already as wanted")
        return
    staged = f"{dest}.hardkit-new"
    yield FileUploadCommand(BytesIO(content.encode()), staged, remote_temp_filename=host.get_temp_filename(staged))
    yield StringCommand("chown", f"{user}:{group}", staged)
    yield StringCommand("chmod", mode, staged)
    check = validate.format(path=shlex.quote(staged))
    yield StringCommand("sh", "-c", shlex.quote(f"{check} || {{ rm -f {shlex.quote(staged)}; exit 1; }}"))
    yield StringCommand("mv", "-f", staged, dest)
