"""SSH: key-only, no root, only the admin group, dev-sec ssh-baseline settings, a strong crypto policy.

The whole of `/etc/ssh/sshd_config` is ours. Its `Include /etc/ssh/sshd_config.d/*.conf` comes
*last*: sshd keeps the first value it reads, so a provider's drop-in (cloud-init's
`50-cloud-init.conf` with `PasswordAuthentication yes`, hetzneronline/community-content #1177)
can add settings we do not make but cannot weaken ours with a global setting. A `Match` block in a
drop-in can (it comes before ours): the checks read `sshd -T -C` (what is in force for each login
context), not this file, and report it.

The crypto policy passes ssh-audit's "Hardened Debian 12 (version 3)" and keeps a KEX paramiko
4.0 speaks (pyinfra and our checks would otherwise be locked out). Every list is filtered by what
the installed OpenSSH offers (`ssh -Q`), so a distro update dropping an algorithm cannot stop sshd
(dev-sec #672). Applied through the guard: validated with `sshd -t`, reverted unless a fresh login
confirms it; with 2FA on, sshd's PAM stack goes live in the same guarded change.
"""

from __future__ import annotations

import secrets

from pyinfra.api import FactBase, StringCommand, deploy, operation
from pyinfra.operations import apt

from roles import guard
from roles import firewall
from roles import backup_server, second_factor, second_factor_data
from roles.access_data import ADMIN_USER, CONNECTED_SSHD_PORT_KEY, FIXED_PORT_KEY, SSHD_PORT
from roles.admin import SSH_GROUP

SSHD_CONFIG = "/etc/ssh/sshd_config"
KEYS: list = []

#: Host keys offered: no ECDSA (ssh-audit fails NIST curves); RSA only at >= RSA_HOST_KEY_BITS.
HOST_KEYS = ["/etc/ssh/ssh_host_ed25519_key", "/etc/ssh/ssh_host_rsa_key"]
RSA_HOST_KEY_BITS = 4096
#: The RSA host key (its public half beside it, + ".pub").
RSA_HOST_KEY = HOST_KEYS[1]
#: A new RSA host key is made beside the old one, under its name + this + "." + a run's random tag.
RSA_ASIDE_SUFFIX = ".hardkit-new"
#: Diffie-Hellman group-exchange moduli smaller than this are removed from /etc/ssh/moduli.
MIN_MODULI_BITS = 3072

#: Preferred order; each list is intersected with `ssh -Q` of the host before it is written.
#: curve25519-sha256 stays: paramiko 4.0 (pyinfra 3.10) has no post-quantum KEX.
CRYPTO_POLICY = {
    "kexalgorithms": ["sntrup761x25519-sha512", "sntrup761x25519-sha512@openssh.com", "curve25519-sha256",
                      "curve25519-sha256@libssh.org", "diffie-hellman-group16-sha512",
                      "diffie-hellman-group18-sha512", "diffie-hellman-group-exchange-sha256"],
    "ciphers": ["chacha20-poly1305@openssh.com", "aes256-gcm@openssh.com", "aes256-ctr", "aes192-ctr",
                "aes128-gcm@openssh.com", "aes128-ctr"],
    "macs": ["hmac-sha2-256-etm@openssh.com", "hmac-sha2-512-etm@openssh.com", "umac-128-etm@openssh.com"],
    "hostkeyalgorithms": ["ssh-ed25519", "ssh-ed25519-cert-v01@openssh.com", "rsa-sha2-512", "rsa-sha2-256"],
}
#: Which `ssh -Q` query lists what the installed OpenSSH supports for each policy list.
QUERY_FOR = {"kexalgorithms": "kex", "ciphers": "cipher", "macs": "mac", "hostkeyalgorithms": "HostKeyAlgorithms"}
#: The config file's spelling of each policy list.
CRYPTO_DIRECTIVES = {"kexalgorithms": "KexAlgorithms", "ciphers": "Ciphers", "macs": "MACs",
                     "hostkeyalgorithms": "HostKeyAlgorithms"}


def settings(data, ports: list[int] | None = None) -> list[tuple[str, str]]:
    """(directive, value) in config order. Lower-cased, they are what `sshd -T` must show.
    `ports` overrides the listening ports (both the old and the new one during a port move)."""
    twofa = second_factor_data.enabled(data)
    return [
        *[("Port", str(p)) for p in (ports or [SSHD_PORT.value(data)])],
        ("AddressFamily", "any"),  # IPv4 and IPv6 (dev-sec #906: ListenAddress 0.0.0.0 drops IPv6)
        ("SyslogFacility", "AUTH"),
        ("LogLevel", "VERBOSE"),  # key fingerprints in the log; fail2ban and audits need them
        ("LoginGraceTime", "30"),
        ("PermitRootLogin", "no"),
        ("StrictModes", "yes"),
        ("MaxAuthTries", "2"),
        ("MaxSessions", "10"),
        ("MaxStartups", "10:30:60"),
        ("PubkeyAuthentication", "yes"),
        # Keys come from the one file hardkit writes: not authorized_keys2 (unmanaged), no lookup command, no
        # certificate authority, so a drop-in cannot add a way in that the `from=` and `keys` lists do not show.
        ("AuthorizedKeysFile", ".ssh/authorized_keys"),
        ("AuthorizedKeysCommand", "none"),
        ("AuthorizedPrincipalsFile", "none"),
        ("TrustedUserCAKeys", "none"),
        # With second_factor_admins: every login needs key + TOTP, but for the Match blocks at the end.
        ("AuthenticationMethods", "publickey,keyboard-interactive" if twofa else "publickey"),
        ("PasswordAuthentication", "no"),
        ("PermitEmptyPasswords", "no"),
        ("KbdInteractiveAuthentication", "yes" if twofa else "no"),  # PAM asks for the TOTP code only
        ("KerberosAuthentication", "no"),
        ("KerberosOrLocalPasswd", "no"),
        ("KerberosTicketCleanup", "yes"),
        ("GSSAPIAuthentication", "no"),
        ("GSSAPICleanupCredentials", "yes"),
        ("HostbasedAuthentication", "no"),
        ("IgnoreRhosts", "yes"),
        ("IgnoreUserKnownHosts", "yes"),
        ("UsePAM", "yes"),  # account and session checks (locks, limits); passwords stay off above
        ("PermitUserEnvironment", "no"),
        ("AllowGroups", " ".join([SSH_GROUP, *backup_server.ssh_groups(data)])),
        ("AllowTcpForwarding", "no"),
        ("AllowStreamLocalForwarding", "no"),
        ("AllowAgentForwarding", "no"),
        ("GatewayPorts", "no"),
        ("PermitTunnel", "no"),
        ("X11Forwarding", "no"),
        ("X11UseLocalhost", "yes"),
        ("PrintMotd", "no"),
        # Yes, unlike dev-sec's sshd-45 ("no"): each login shows when and from where the account last
        # logged in, so its owner notices a login that was not theirs (Lynis SSH-7408 asks for it too).
        ("PrintLastLog", "yes"),
        ("TCPKeepAlive", "no"),
        ("ClientAliveInterval", "300"),
        ("ClientAliveCountMax", "2"),  # a dead client is dropped after 10 minutes
        ("Compression", "no"),
        ("UseDNS", "no"),
        ("Banner", "none"),
        ("DebianBanner", "no"),
    ]


def settings_for_login(data, user: str, addr: str) -> list[tuple[str, str]]:
    """settings() as sshd applies them to a login of `user` from `addr` (after hardkit's Match blocks)."""
    overrides = second_factor.login_overrides(data, user, addr)
    base = settings(data)
    names = {k for k, _ in base}
    return [(k, overrides.get(k, v)) for k, v in base] + [(k, v) for k, v in overrides.items() if k not in names]


def crypto_lists(supported: dict[str, list[str]]) -> dict[str, list[str]]:
    """The policy lists, keeping only what this OpenSSH supports (in policy order)."""
    out = {}
    for key, wanted in CRYPTO_POLICY.items():
        have = set(supported.get(QUERY_FOR[key], []))
        out[key] = [alg for alg in wanted if alg in have]
    return out


def render_config(data, supported: dict[str, list[str]], ports: list[int] | None = None) -> str:
    lines = ["# Managed by hardkit (roles/ssh.py): edits here are replaced on the next deploy.",
             "# Local additions go in /etc/ssh/sshd_config.d/*.conf, read after the settings below: sshd keeps",
             "# the first value it reads, so a setting there cannot override one here; a Match block there can,",
             "# and the compliance checks of every login context report it.", ""]
    lines += [f"HostKey {path}" for path in HOST_KEYS]
    for key, algs in crypto_lists(supported).items():
        if not algs:
            raise ValueError(f"the host's OpenSSH supports none of the {key} policy; refusing to write sshd_config")
        lines.append(f"{CRYPTO_DIRECTIVES[key]} {','.join(algs)}")
    lines += [f"{k} {v}" for k, v in settings(data, ports)]
    lines += ["Subsystem sftp internal-sftp -f AUTHPRIV -l INFO", "", "Include /etc/ssh/sshd_config.d/*.conf", ""]
    # Match blocks last: everything after a Match line belongs to it, and the Include must stay global.
    lines += second_factor.sshd_match_blocks(data) + backup_server.sshd_match_block(data)
    return "\n".join(lines)


class SshAlgorithms(FactBase):
    """What the installed OpenSSH supports: {query: [algorithms]} for each `ssh -Q` query we use."""

    def command(self):
        return "; ".join(f"echo '## {q}'; ssh -Q {q}" for q in sorted(set(QUERY_FOR.values())))

    def process(self, output):
        result, current = {}, None
        for line in output:
            if line.startswith("## "):
                current = line[3:].strip()
                result[current] = []
            elif current and line.strip():
                result[current].append(line.strip())
        return result


class RsaHostKeyBits(FactBase):
    """Size of the RSA host key in bits (0 if there is none)."""

    @staticmethod
    def default():
        return 0  # pyinfra skips process() when the command prints nothing: no key

    def command(self):
        return f"ssh-keygen -lf {RSA_HOST_KEY}.pub 2>/dev/null | cut -d' ' -f1 || true"

    def process(self, output):
        return int(output[0]) if output and output[0].strip().isdigit() else 0


class WeakModuli(FactBase):
    """How many DH group-exchange moduli in /etc/ssh/moduli are below MIN_MODULI_BITS."""

    def command(self):
        return (f"awk '!/^#/ && NF >= 7 && $5 < {MIN_MODULI_BITS - 1} {{n++}} END {{print n+0}}' "
                "/etc/ssh/moduli 2>/dev/null || echo 0")

    def process(self, output):
        return int(output[0]) if output else 0


@operation()
def strong_rsa_host_key():
    """Replace an RSA host key smaller than RSA_HOST_KEY_BITS (sshd reads it on the guarded reload)."""
    from pyinfra import host

    bits = host.get_fact(RsaHostKeyBits)
    if bits >= RSA_HOST_KEY_BITS:
        host.noop(f"RSA host key has {bits} bits")
        return
    # Made aside, then moved over the old pair, the public half (which the fact reads) last: a
    # deploy killed midway leaves a key in place, and a weak-looking one if the pair is not done.
    # The aside name is this run's own: the ssh-keygen of a run killed midway may still be running
    # on the host (nothing hangs it up) and write its file after this run removed the leftovers,
    # where this run's ssh-keygen would stop at its "Overwrite (y/n)?".
    key = RSA_HOST_KEY
    new = f"{key}{RSA_ASIDE_SUFFIX}.{secrets.token_hex(4)}"
    yield StringCommand("rm", "-f", f"{key}{RSA_ASIDE_SUFFIX}*")
    yield StringCommand("ssh-keygen", "-q", "-t", "rsa", "-b", str(RSA_HOST_KEY_BITS), "-N", "''", "-f", new,
                        "</dev/null")
    yield StringCommand("mv", "-f", new, key)
    yield StringCommand("mv", "-f", new + ".pub", key + ".pub")


@operation()
def drop_weak_moduli():
    """Keep only group-exchange moduli of MIN_MODULI_BITS and more."""
    from pyinfra import host

    if host.get_fact(WeakModuli) == 0:
        host.noop("no weak moduli")
        return
    tmp = "/etc/ssh/moduli.hardkit-new"
    # The size column is the modulus size minus one (3071 for a 3072-bit group).
    yield StringCommand("awk", "-v", f"min={MIN_MODULI_BITS - 1}", "'/^#/ || NF < 7 || $5 >= min'",
                        "/etc/ssh/moduli", ">", tmp, "&&", "mv", "-f", tmp, "/etc/ssh/moduli")


class SshdPorts(FactBase):
    """The ports sshd is configured to listen on now (`sshd -T`)."""

    def command(self):
        return "sshd -T 2>/dev/null | awk '$1 == \"port\" {print $2}'"

    def process(self, output):
        return sorted(int(line) for line in output if line.strip().isdigit())


def change_contents(data, supported, ports: list[int]) -> dict[str, str]:
    """What the guarded sshd change puts live: sshd_config and, with 2FA on, sshd's PAM stack (every login
    runs through it, so it is as able to lock the deploy out as sshd_config is)."""
    return {SSHD_CONFIG: render_config(data, supported, ports), **second_factor.guarded_files(data)}


def change_validators(data) -> list[str]:
    """Checks run on the staged files before they go live (`{staged}`: the staging folder)."""
    checks = ["mkdir -p /run/sshd", "sshd -t -f {staged}" + SSHD_CONFIG]
    return checks + ([second_factor.pam_validate_command()] if second_factor.guarded_files(data) else [])


def _sshd_change(data, supported, ports: list[int], confirm_port: int, label: str):
    guard.guarded_change(
        name=f"sshd configuration{label} (validated, auto-revert unless a fresh login confirms)",
        change_id="ssh", contents=change_contents(data, supported, ports),
        modes={SSHD_CONFIG: "600", second_factor.PAM_SSHD: "644"}, validate=change_validators(data),
        reload="systemctl reload ssh.service", revert_seconds=guard.REVERT_SECONDS.value(data),
        confirm_user=ADMIN_USER.value(data), confirm_sshd_port=confirm_port)


@deploy("SSH")
def ssh():
    from pyinfra import host

    apt.packages(name="Install the OpenSSH server", packages=["openssh-server"])
    strong_rsa_host_key(name=f"RSA host key of at least {RSA_HOST_KEY_BITS} bits")
    drop_weak_moduli(name=f"Only DH moduli of {MIN_MODULI_BITS}+ bits")
    supported = host.get_fact(SshAlgorithms)
    wanted = SSHD_PORT.value(host.data)
    current = host.get_fact(SshdPorts) or [22]
    if current == [wanted]:
        _sshd_change(host.data, supported, [wanted], wanted, "")
        return
    # A port move, in phases that each must let a fresh login in before the next one starts:
    # open the firewall for both ports, listen on both, listen on the new one only; the firewall
    # role then closes the old port.
    if host.data.get(FIXED_PORT_KEY):
        raise ValueError(f"{host.name}: sshd_port moves from {current} to {wanted}, but ssh_port fixes the "
                         "connection port; remove ssh_port (or use ssh_forwarded_ports) so the new port can be confirmed")
    both = sorted(set(current) | {wanted})
    on_now = host.data.get(CONNECTED_SSHD_PORT_KEY) or current[0]
    firewall.ruleset_change(host.data, both, confirm_port=on_now, label=f" opening SSH ports {both}")
    _sshd_change(host.data, supported, both, wanted, f" listening on {both}")
    _sshd_change(host.data, supported, [wanted], wanted, f" listening on {wanted} only")


apply = ssh
