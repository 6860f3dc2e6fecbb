#!/usr/bin/python3
"""hardkit-bot-egress: keep the bot's egress allow-list (nftables sets) in step with DNS.

Installed on the host by roles/bot_egress.py as /usr/local/sbin/hardkit-bot-egress; standard
library only (the VPS has python3, not hardkit's dependencies).

    hardkit-bot-egress load       load the table (ruleset file) with its set elements, one transaction
    hardkit-bot-egress refresh    re-resolve the endpoints and replace the set elements, one transaction
                                  (the whole table if it is missing)
    hardkit-bot-egress check-config PATH    exit 2 with a one-line error if the config is invalid

The config (JSON, written by the deploy): {"ruleset": PATH, "endpoints": ["host:port", ...]}, and
optionally "table": the table's name when not the bot's (the notifier's allow-list, roles/alerts.py,
is the same kind of table for another user).
Endpoints are "name:port", "IPv4:port" or "[IPv6]:port". Names are resolved here, on the host,
with the host's own resolver; a name that does not resolve keeps its last good addresses (kept
in the state file), so a DNS outage never cuts the bot off its exchange. The resolvers the bot
may query are read from /etc/resolv.conf each run; loopback resolvers (systemd-resolved's
127.0.0.53) are reached over `lo`, which the table accepts anyway, so they are not listed.
Every change of a set is logged (added/removed elements) to stdout, i.e. the journal.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone

#: The nftables table of the bot's egress filter (its own: never the guarded `inet hardkit`).
TABLE = "hardkit_bot"
FAMILY = "inet"
#: Sets the tool fills: exchange endpoints (address . port) and DNS resolvers, per IP version.
EXCHANGE_SETS = {4: "exchange_v4", 6: "exchange_v6"}
RESOLVER_SETS = {4: "resolvers_v4", 6: "resolvers_v6"}
ALL_SETS = [*EXCHANGE_SETS.values(), *RESOLVER_SETS.values()]

CONFIG_FILE = "/etc/hardkit/bot-egress.json"
STATE_FILE = "/var/lib/hardkit-bot-egress/state.json"
RESOLV_CONF = "/etc/resolv.conf"
NFT = "nft"


class ConfigError(ValueError):
    """The config or an endpoint is malformed (a user mistake: one line, exit 2)."""


@dataclass(frozen=True)
class Endpoint:
    host: str  # a name, or the address as written
    port: int
    address: ipaddress.IPv4Address | ipaddress.IPv6Address | None  # set for a literal address

    @property
    def text(self) -> str:
        bracketed = self.address is not None and self.address.version == 6
        return f"[{self.host}]:{self.port}" if bracketed else f"{self.host}:{self.port}"


def parse_endpoint(text: object) -> Endpoint:
    """ "name:port", "IPv4:port" or "[IPv6]:port" -> Endpoint; ConfigError saying what is wrong."""
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(f"{text!r} is not an endpoint: write 'host:port', 'IPv4:port' or '[IPv6]:port'")
    raw = text.strip()
    if raw.startswith("["):
        host, sep, port_text = raw[1:].partition("]:")
        if not sep:
            raise ConfigError(f"{raw!r}: an IPv6 endpoint is written '[address]:port'")
        try:
            address = ipaddress.IPv6Address(host)
        except ValueError:
            raise ConfigError(f"{raw!r}: {host!r} is not an IPv6 address") from None
    else:
        host, sep, port_text = raw.rpartition(":")
        if not sep or not host:
            raise ConfigError(f"{raw!r} has no port: write 'host:port'")
        if ":" in host:
            raise ConfigError(f"{raw!r}: put an IPv6 address in brackets, '[address]:port'")
        try:
            address = ipaddress.IPv4Address(host)
        except ValueError:
            address = None
            if not _is_hostname(host):
                raise ConfigError(f"{raw!r}: {host!r} is neither an IPv4 address nor a host name") from None
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ConfigError(f"{raw!r}: the port must be 1-65535")
    return Endpoint(host=str(address) if address else host.lower().rstrip("."), port=int(port_text), address=address)


def _is_hostname(name: str) -> bool:
    labels = name.rstrip(".").split(".")
    return len(name) <= 253 and all(
        0 < len(label) <= 63 and label[0] != "-" and label[-1] != "-"
        and all(c.isalnum() or c == "-" for c in label) for label in labels) and not labels[-1].isdigit()


def load_config(path: str) -> tuple[str, list[Endpoint]]:
    """(ruleset path, endpoints) of a config file."""
    ruleset, endpoints, _ = load_config_table(path)
    return ruleset, endpoints


def load_config_table(path: str) -> tuple[str, list[Endpoint], str]:
    """(ruleset path, endpoints, table name) of a config file."""
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path}: cannot read the config ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("ruleset"), str) or \
            not isinstance(data.get("endpoints"), list):
        raise ConfigError(f"{path}: expected {{'ruleset': PATH, 'endpoints': [...]}}")
    table = data.get("table", TABLE)
    if not isinstance(table, str) or not table.replace("_", "").isalnum():
        raise ConfigError(f"{path}: table must be a plain nftables table name, not {table!r}")
    return data["ruleset"], [parse_endpoint(e) for e in data["endpoints"]], table


# --- what the sets should hold --------------------------------------------------------------------

def resolvers(resolv_conf: str) -> dict[int, set[str]]:
    """The non-loopback nameservers of a resolv.conf text, per IP version (scope ids dropped)."""
    found: dict[int, set[str]] = {4: set(), 6: set()}
    for line in resolv_conf.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "nameserver":
            try:
                address = ipaddress.ip_address(parts[1].split("%")[0])
            except ValueError:
                continue
            if not address.is_loopback:
                found[address.version].add(str(address))
    return found


def system_resolve(name: str) -> list[str]:
    """Every address the host's resolver gives for `name` (files, then DNS, as nsswitch says)."""
    infos = socket.getaddrinfo(name, None, type=socket.SOCK_STREAM)
    return sorted({str(ipaddress.ip_address(info[4][0].split("%")[0])) for info in infos})


def resolve_endpoints(endpoints: list[Endpoint], last_good: dict[str, list[str]], resolve=system_resolve,
                      log=print) -> dict[str, list[str]]:
    """Addresses per endpoint host name; a name that fails keeps its last good addresses."""
    resolved: dict[str, list[str]] = {}
    for name in sorted({e.host for e in endpoints if e.address is None}):
        try:
            addresses = sorted(set(resolve(name)))
            if not addresses:
                raise OSError("no addresses")
        except OSError as e:
            kept = last_good.get(name, [])
            log(f"{name}: resolution failed ({e}); keeping the last good addresses: {', '.join(kept) or 'none'}")
            if kept:
                resolved[name] = kept
            continue
        resolved[name] = addresses
    return resolved


def wanted_elements(endpoints: list[Endpoint], resolved: dict[str, list[str]],
                    nameservers: dict[int, set[str]]) -> dict[str, set[str]]:
    """Set name -> elements as nft writes them ("192.0.2.1 . 443", "192.0.2.53")."""
    sets: dict[str, set[str]] = {name: set() for name in ALL_SETS}
    for e in endpoints:
        for text in ([str(e.address)] if e.address else resolved.get(e.host, [])):
            address = ipaddress.ip_address(text)
            sets[EXCHANGE_SETS[address.version]].add(f"{address} . {e.port}")
    for version, addresses in nameservers.items():
        sets[RESOLVER_SETS[version]] |= addresses
    return sets


# --- nftables ---------------------------------------------------------------------------------------

def transaction(elements: dict[str, set[str]], ruleset: str | None = None, table: str = TABLE) -> str:
    """nft script replacing every set's elements (and the whole table first, with `ruleset`)."""
    lines = [ruleset.rstrip("\n")] if ruleset is not None else []
    for name in ALL_SETS:
        if ruleset is None:
            lines.append(f"flush set {FAMILY} {table} {name}")
        if elements.get(name):
            lines.append(f"add element {FAMILY} {table} {name} {{ {', '.join(sorted(elements[name]))} }}")
    return "\n".join(lines) + "\n"


def _element_text(elem) -> str:
    if isinstance(elem, dict) and "elem" in elem:  # an element with a counter or timeout
        return _element_text(elem["elem"]["val"])
    if isinstance(elem, dict) and "concat" in elem:
        address, port = elem["concat"]
        return f"{ipaddress.ip_address(address)} . {port}"
    return str(ipaddress.ip_address(elem))


def loaded_elements(nft_json: dict) -> dict[str, set[str]] | None:
    """Set name -> elements from `nft -j list table`; None when the table is not loaded."""
    sets = {o["set"]["name"]: {_element_text(e) for e in o["set"].get("elem", [])}
            for o in nft_json.get("nftables", []) if "set" in o}
    return sets if set(ALL_SETS) <= set(sets) else None


def current_elements(nft: str = NFT, table: str = TABLE) -> dict[str, set[str]] | None:
    res = subprocess.run([nft, "-j", "list", "table", FAMILY, table], capture_output=True, text=True)
    if res.returncode != 0:
        return None
    return loaded_elements(json.loads(res.stdout))


def apply(script: str, nft: str = NFT) -> None:
    """Run an nft script as one transaction: all of it applies, or none of it."""
    res = subprocess.run([nft, "-f", "-"], input=script, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"nft refused the update, nothing was changed: {res.stderr.strip()}")


def changes(before: dict[str, set[str]] | None, after: dict[str, set[str]]) -> list[str]:
    """One log line per set that changes."""
    lines = []
    for name in ALL_SETS:
        old, new = (before or {}).get(name, set()), after.get(name, set())
        if old != new:
            parts = [f"+{e}" for e in sorted(new - old)] + [f"-{e}" for e in sorted(old - new)]
            lines.append(f"{name}: {', '.join(parts)}")
    return lines


# --- state ------------------------------------------------------------------------------------------

def read_state(path: str) -> dict[str, list[str]]:
    """Last good addresses per name ({} when there is no usable state yet)."""
    try:
        with open(path) as f:
            data = json.load(f)
        return {k: list(v) for k, v in data.get("resolved", {}).items()}
    except (OSError, ValueError, AttributeError):
        return {}


def write_state(path: str, resolved: dict[str, list[str]]) -> None:
    """Replace the state file atomically (a crash leaves the old one)."""
    folder = os.path.dirname(path)
    os.makedirs(folder, mode=0o700, exist_ok=True)
    data = {"resolved": resolved, "updated": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".state-")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


# --- commands ---------------------------------------------------------------------------------------

def run(action: str, config: str, state: str, resolv_conf: str = RESOLV_CONF, nft: str = NFT,
        resolve=system_resolve, log=print) -> int:
    ruleset_path, endpoints, table = load_config_table(config)
    last_good = read_state(state)
    resolved = resolve_endpoints(endpoints, last_good, resolve=resolve, log=log)
    try:
        with open(resolv_conf) as f:
            nameservers = resolvers(f.read())
    except OSError as e:
        log(f"{resolv_conf}: unreadable ({e}); no DNS resolver is allowed")
        nameservers = {4: set(), 6: set()}
    wanted = wanted_elements(endpoints, resolved, nameservers)
    before = current_elements(nft, table)
    if action == "refresh" and before is None:
        # e.g. `systemctl restart nftables` flushed every table: until reloaded, the bot would be
        # judged by the host firewall alone, so the refresh puts the whole table back.
        log(f"table {FAMILY} {table} was not loaded: loading it")
        action = "load"
    if action == "load":
        with open(ruleset_path) as f:
            apply(transaction(wanted, ruleset=f.read(), table=table), nft)
        log(f"table {FAMILY} {table} loaded from {ruleset_path}")
    elif before != wanted:
        apply(transaction(wanted, table=table), nft)
    for line in changes(before, wanted) or ["sets unchanged"]:
        log(line)
    for name in sorted({e.host for e in endpoints if e.address is None} - set(resolved)):
        log(f"{name}: no address known yet: the bot cannot reach it")
    write_state(state, {**last_good, **resolved})
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hardkit-bot-egress", description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=["load", "refresh", "check-config"])
    parser.add_argument("path", nargs="?", help="the config to check (check-config)")
    parser.add_argument("--config", default=CONFIG_FILE)
    parser.add_argument("--state", default=STATE_FILE)
    parser.add_argument("--resolv-conf", default=RESOLV_CONF)
    args = parser.parse_args(argv)
    try:
        if args.action == "check-config":
            load_config(args.path or args.config)
            return 0
        return run(args.action, args.config, args.state, args.resolv_conf)
    except ConfigError as e:
        print(f"hardkit-bot-egress: {e}", file=sys.stderr)
        return 2
    except (OSError, RuntimeError) as e:
        print(f"hardkit-bot-egress: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
