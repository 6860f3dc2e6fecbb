#!/usr/bin/env bash
# Prepare this machine (Debian 12, root) to run hardkit and its lab: Debian packages the lab
# and the offline validators need, then a venv with the locked controller dependencies.
# Safe to run again: it installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

# Tools of the controller: the lab (mmdebstrap, nspawn, slirp4netns, qemu), the real validators
# rendered configs are checked with (sshd -t, nft -c, fail2ban-client -t, visudo -cf), ssh-keygen,
# the integrity and backup tools the unit tests run for real (aide --config-check, rkhunter
# --config-check, restic against a loopback sshd), the headless browser the bot's dashboard is tested in (chromium + chromedriver), and
# the C toolchain the 2FA tests build their software FIDO2 key with (gcc, libc6-dev, libssl-dev).
DEB_PACKAGES=(
  mmdebstrap systemd-container slirp4netns iproute2 util-linux e2fsprogs
  qemu-system-x86 qemu-utils zstd
  openssh-client openssh-server nftables fail2ban python3-systemd sudo netbase age
  kmod make python3-venv
  aide rkhunter restic
  chromium chromium-driver
  gcc libc6-dev libssl-dev
)

missing=()
for p in "${DEB_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing Debian packages: ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  # The validators come from packages whose services must not start on the controller
  # (nothing of ours may listen here): block service starts while installing.
  policy=/usr/sbin/policy-rc.d
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy"; chmod +x "$policy"
    trap 'rm -f "$policy"' EXIT
  fi
  apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi

# This machine's pip configuration names extra local indexes that may be absent: keep their noise out.
pip_quiet() { "$@" 2> >(grep -v '^WARNING: Location' >&2); }

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv" >&2
  "$PY" -m venv .venv
fi
# Optional extras, each locked in requirements/<extra>.lock on top of the controller's lock:
# HARDKIT_EXTRAS=molecule also installs the molecule scenario's tools (CI sets it: .ci/run).
# .venv/.locked lists the extras installed; a lock newer than it, or a new extra, installs again.
read -r -a extras <<< "${HARDKIT_EXTRAS:-}"
stale=0
[ -e .venv/.locked ] && [ ! requirements/controller.lock -nt .venv/.locked ] && [ ! pyproject.toml -nt .venv/.locked ] || stale=1
for extra in "${extras[@]}"; do
  [ -f "requirements/$extra.lock" ] || { echo "setup: HARDKIT_EXTRAS: no lock requirements/$extra.lock" >&2; exit 2; }
  [ "requirements/$extra.lock" -nt .venv/.locked ] && stale=1
  grep -qx "$extra" .venv/.locked 2>/dev/null || stale=1
done
if [ "$stale" = 1 ]; then
  echo "setup: installing locked Python dependencies" >&2
  pip_quiet .venv/bin/pip install -q --disable-pip-version-check --require-hashes --no-deps -r requirements/controller.lock
  pip_quiet .venv/bin/pip install -q --disable-pip-version-check --no-deps -e .
  if [ -f bot/pyproject.toml ]; then
    pip_quiet .venv/bin/pip install -q --disable-pip-version-check --no-deps -e bot
  fi
  for extra in "${extras[@]}"; do
    echo "setup: installing the locked '$extra' extra" >&2
    pip_quiet .venv/bin/pip install -q --disable-pip-version-check --require-hashes --no-deps -r "requirements/$extra.lock"
  done
  printf '%s\n' "${extras[@]}" > .venv/.locked
fi
echo "setup: ready (.venv/bin/hardkit)" >&2
