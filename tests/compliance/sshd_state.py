"""Facts about sshd gathered once per host: the effective configuration and what OpenSSH supports."""

from __future__ import annotations

from roles.ssh import QUERY_FOR


def effective(target, context: str | None = None) -> dict[str, list[str]]:
    """`sshd -T` as {keyword: [values]} (keywords may repeat, e.g. hostkey). `context` is sshd's -C."""
    cmd = "sshd -T" + (f" -C {context}" if context else "")

    def produce(t):
        out: dict[str, list[str]] = {}
        for line in t.check_output(cmd).splitlines():
            key, _, value = line.partition(" ")
            out.setdefault(key.lower(), []).append(value.strip())
        return out

    return target.fact(f"sshd -T {context}", produce)


def supported(target) -> dict[str, list[str]]:
    def produce(t):
        result = {}
        for query in sorted(set(QUERY_FOR.values())):
            result[query] = t.check_output(f"ssh -Q {query}").split()
        return result

    return target.fact("ssh -Q", produce)


def one(config: dict[str, list[str]], key: str) -> str:
    values = config.get(key.lower(), [])
    assert len(values) == 1, f"sshd -T shows {key} {values!r}"
    return values[0]
