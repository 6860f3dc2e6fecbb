"""Who may reach the host and how: the data every access-related role and check shares."""

from __future__ import annotations

from roles.data import DataKey, is_admin_username, is_network_list, is_port, is_public_key_list, is_username

BOOTSTRAP_USER = DataKey(
    "bootstrap_user", "root",
    "The user the provider hands the VPS over with (key login). hardkit connects as this user only "
    "until the admin exists; afterwards it connects as the admin and uses sudo.",
    is_username)

ADMIN_USER = DataKey(
    "admin_user", None,
    "The named admin account the deploy creates; the only account allowed to log in over SSH.",
    is_admin_username, required=True)

ADMIN_KEYS = DataKey(
    "admin_keys", None,
    "The admin's SSH public keys: key lines or paths to .pub files on the controller.",
    is_public_key_list, required=True)

SSH_ALLOW_FROM = DataKey(
    "ssh_allow_from", None,
    "Addresses/CIDRs (IPv4 and IPv6) allowed to reach SSH; everything else is dropped by the firewall. "
    "Must include the address the controller connects from, or the deploy refuses to run.",
    is_network_list, required=True)

SSHD_PORT = DataKey(
    "sshd_port", 22,
    "The port sshd listens on (and the firewall opens to the allow-list). Changing it moves sshd in two "
    "guarded phases: listen on both ports, confirm a login on the new one, then drop the old one.",
    is_port)

KEYS = [BOOTSTRAP_USER, ADMIN_USER, ADMIN_KEYS, SSH_ALLOW_FROM, SSHD_PORT]

# Keys the runner adds to the data it hands pyinfra for one run (never set by operators):
#: True when the operator fixed the connection port with ssh_port (no port moves then).
FIXED_PORT_KEY = "hardkit_fixed_ssh_port"
#: The sshd port this run reached the host on: where a port move starts.
CONNECTED_SSHD_PORT_KEY = "hardkit_connected_sshd_port"
