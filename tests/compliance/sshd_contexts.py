"""Which connections sshd's effective configuration must be evaluated for, and evaluating them at once.

`sshd -T` without `-C` skips every `Match` block, and one hard-coded context (an address, port
22) skips the blocks a provider writes for the operator's real address or port. So the contexts
are: every allowed client range (its first and last address, plus any address a `Match Address`
criterion names inside it) crossed with every port sshd listens on, for the admin's login.
Everything here is pure (config text and lists in, strings out) so that unit tests can run the
same evaluation against a real local sshd.
"""

from __future__ import annotations

import ipaddress
import re
import shlex

#: Printed before each context's `sshd -T` output in one batched run.
MARKER = "### hardkit-context "

_MATCH_RE = re.compile(r"^\s*match\s+(.*)$", re.IGNORECASE)


def parse(text: str) -> dict[str, list[str]]:
    """`sshd -T` output as {keyword: [values]} (keywords may repeat, e.g. hostkey)."""
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        key, _, value = line.partition(" ")
        out.setdefault(key.lower(), []).append(value.strip())
    return out


def listening_ports(config: dict[str, list[str]]) -> list[int]:
    """Every port sshd listens on: `Port` lines and ports given in `ListenAddress addr:port`."""
    ports = {int(p) for p in config.get("port", [])}
    for addr in config.get("listenaddress", []):
        host, sep, port = addr.rpartition(":")
        if sep and port.isdigit() and (host.endswith("]") or host.count(":") == 0):
            ports.add(int(port))
    return sorted(ports)


def sshd_socket_ports(ss_output: str) -> list[int]:
    """Ports sshd has listening sockets on, from `ss -H -tlnp` (works even when a `Match LocalPort`
    block makes a bare `sshd -T` refuse to run)."""
    ports = set()
    for line in ss_output.splitlines():
        cols = line.split()
        if len(cols) >= 6 and '"sshd"' in line:
            ports.add(int(cols[3].rsplit(":", 1)[1]))
    return sorted(ports)


def match_networks(config_text: str) -> list[ipaddress._BaseNetwork]:
    """Addresses and CIDRs named by `Match ... Address` criteria (negations included: they decide too)."""
    found = []
    for line in config_text.splitlines():
        m = _MATCH_RE.match(line)
        if not m:
            continue
        words = m.group(1).split()
        for i, word in enumerate(words[:-1]):
            if word.lower() != "address":
                continue
            for pattern in words[i + 1].split(","):
                try:
                    found.append(ipaddress.ip_network(pattern.lstrip("!"), strict=False))
                except ValueError:
                    continue  # a wildcard pattern (192.0.2.*): the range ends still stand for it
    return found


def client_addresses(allow_from: list[str], config_text: str) -> list[str]:
    """Representative client addresses: each allowed range's ends and each Match address inside it."""
    named = match_networks(config_text)
    out: list[str] = []
    for entry in allow_from:
        net = ipaddress.ip_network(entry, strict=False)
        picks = [net.network_address, net.broadcast_address]
        for m in named:
            if m.version == net.version and m.overlaps(net):
                inner = m if m.subnet_of(net) else net
                picks += [inner.network_address, inner.broadcast_address]
        for a in picks:
            if str(a) not in out:
                out.append(str(a))
    return out


def contexts(user: str, allow_from: list[str], ports: list[int], config_text: str,
             local_addresses: dict[int, str] | None = None) -> list[str]:
    """`sshd -C` specs: admin login from each representative client address to each listening port."""
    local = {4: "0.0.0.0", 6: "::", **(local_addresses or {})}
    out = []
    for addr in client_addresses(allow_from, config_text):
        laddr = local[ipaddress.ip_address(addr).version]
        for port in ports:
            out.append(f"user={user},host={addr},addr={addr},laddr={laddr},lport={port}")
    return out


def batch_script(specs: list[str], sshd_t: str = "sshd -T") -> str:
    """One shell command printing `sshd -T -C` for each spec after a marker line (one round trip)."""
    failed = shlex.quote(MARKER + "FAILED")
    parts = [f"echo {shlex.quote(MARKER + spec)}; {sshd_t} -C {shlex.quote(spec)} || echo {failed}" for spec in specs]
    return "; ".join(parts)


def split_batch(output: str) -> dict[str, dict[str, list[str]]]:
    """The batch's output as {spec: parsed sshd -T}; a spec sshd refused raises (never a silent pass)."""
    result: dict[str, list[str]] = {}
    current = None
    for line in output.splitlines():
        if line.startswith(MARKER):
            tag = line[len(MARKER):]
            if tag == "FAILED":
                raise AssertionError(f"sshd -T -C {current} failed")
            current = tag
            result[current] = []
        elif current is not None:
            result[current].append(line)
    return {spec: parse("\n".join(lines)) for spec, lines in result.items()}


def disagreements(per_context: dict[str, dict[str, list[str]]], directive: str, expected: str) -> dict[str, list]:
    """{spec: values found} for every context where the directive is not exactly the expected value."""
    key = directive.lower()
    return {spec: cfg.get(key, []) for spec, cfg in per_context.items()
            if [v.lower() for v in cfg.get(key, [])] != [expected.lower()]}
