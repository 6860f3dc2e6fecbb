"""People's SSH login and sudo (see roles/second_factor_data.py), granted only after sshd asks for two factors.

The second_factor role, before the SSH role, makes the people's accounts and keys; this role, after
it, puts them in the SSH group and gives them sudo. pyinfra stops a host at its first failed
operation, so when the guarded sshd change that turns the second factor on fails (validation, no
confirming login), no person has been let in with a key alone meanwhile, and none holds sudo.
Removing a person (or every person) happens here too: the group's members are exact.
"""

from __future__ import annotations

from pyinfra.api import deploy
from pyinfra.operations import files

from roles import accounts
from roles.access_data import ADMIN_USER
from roles.admin import SSH_GROUP
from roles.ops import install_file
from roles.second_factor_data import people

PEOPLE_SUDOERS = "/etc/sudoers.d/hardkit-people"
KEYS: list = []


def people_sudoers_text(names: list[str]) -> str:
    lines = ["# Managed by hardkit: people who logged in with two factors may use sudo without a password."]
    lines += [f"{n} ALL=(ALL:ALL) NOPASSWD: ALL" for n in names]
    return "\n".join(lines) + "\n"


@deploy("People's SSH login and sudo")
def people_access():
    from pyinfra import host

    everyone = sorted(people(host.data))
    accounts.group_members(name="SSH group: the admin and the people", group=SSH_GROUP,
                           members=[ADMIN_USER.value(host.data), *everyone])
    if not everyone:
        files.file(name="No sudo rule for people", path=PEOPLE_SUDOERS, present=False)
        return
    install_file(name="sudoers rule for the people (checked with visudo)", content=people_sudoers_text(everyone),
                 dest=PEOPLE_SUDOERS, mode="0440", validate="visudo -cf {path}")


apply = people_access
