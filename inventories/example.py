"""An inventory for real VPSs: copy it, fill in your hosts, then `hardkit deploy` and `hardkit verify` it.

It is an ordinary pyinfra inventory (plain Python): every module-level list is a group of
`(name, data)` hosts; names starting with `_` are not groups. hardkit validates every key of
every host before touching any of them (`roles/*.py` document each key and its default).

A provider hands a Debian 12 VPS over as root with your key: the first deploy logs in as
`bootstrap_user`, creates `admin_user`, and locks root out; later deploys log in as the admin.
"""

# Settings shared by every host. Each key is documented where it is defined (roles/*_data.py, roles/*.py).
_fleet = {
    # How the controller connects (pyinfra's keys).
    "ssh_key": "~/.ssh/id_ed25519",                     # your private key on this machine
    "ssh_known_hosts_file": "~/.ssh/known_hosts",       # holds the hosts' keys (check them out of band)
    "ssh_strict_host_key_checking": "yes",              # or "accept-new" to trust on first use
    # Who gets in afterwards.
    "bootstrap_user": "root",
    "admin_user": "ops",
    "admin_keys": ["~/.ssh/id_ed25519.pub"],
    # Who may reach SSH at all: your office/VPN/bastion addresses. The deploy refuses to run if the
    # address it connects from is not in this list (it would lock you out).
    "ssh_allow_from": ["203.0.113.7/32", "2001:db8:42::/48"],
    # Where the bot may connect (its egress allow-list, roles/bot_egress.py); paper mode needs none.
    # "bot_egress_endpoints": ["api.binance.com:443"],
}

# The bots. Replace the documentation addresses (203.0.113.0/24, 2001:db8::/32) with yours.
bots = [
    ("bot-fra-1", {**_fleet, "ssh_hostname": "203.0.113.10"}),
    ("bot-ams-1", {**_fleet, "ssh_hostname": "bot-ams-1.example.net"}),
    # A container VPS (LXC/OpenVZ): its kernel, audit and clock are the provider's. Declared, verify
    # reports those controls as NOT VERIFIED with the reason; undeclared, they fail.
    # ("bot-lxc-1", {**_fleet, "ssh_hostname": "203.0.113.11", "container": True}),
]
