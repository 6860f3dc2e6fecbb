#!/bin/sh
# hardkit-guard: apply a risky configuration change (sshd, firewall) with an automatic revert.
#
#   hardkit-guard apply ID SECONDS RELOAD_CMD LIVE_PATH...   back up LIVE_PATHs, arm a revert timer,
#                                                           move /var/lib/hardkit/staged/ID/LIVE_PATH
#                                                           into place, run RELOAD_CMD
#   hardkit-guard confirm ID     a fresh login worked: cancel the revert, drop the backup
#   hardkit-guard revert ID      put the backup back and reload (what the timer runs)
#   hardkit-guard revert-pending at boot: any change never confirmed is reverted
#   hardkit-guard pending        list changes waiting for confirmation
#
# Installed by hardkit (roles/guard.py); the controller calls it, the timer and boot unit call it.
set -eu
STATE=/var/lib/hardkit/guard
STAGED=/var/lib/hardkit/staged

log() { logger -t hardkit-guard -p "auth.$1" -- "$2" 2>/dev/null || true; echo "hardkit-guard: $2" >&2; }

unit() { echo "hardkit-revert-$1"; }

apply() {
  id=$1 seconds=$2 reload=$3; shift 3
  dir="$STATE/$id"
  if [ -d "$dir" ]; then
    # An earlier change of this kind was never confirmed: undo it before stacking a new one.
    systemctl stop "$(unit "$id").timer" 2>/dev/null || true
    revert "$id"
  fi
  rm -rf "$dir.new"
  mkdir -p "$dir.new/files"
  printf '%s\n' "$reload" > "$dir.new/reload"
  : > "$dir.new/managed"
  for live in "$@"; do
    [ -e "$STAGED/$id$live" ] || { log err "staged file missing: $STAGED/$id$live"; rm -rf "$dir.new"; exit 2; }
    printf '%s\n' "$live" >> "$dir.new/managed"
    if [ -e "$live" ]; then
      mkdir -p "$dir.new/files$(dirname "$live")"
      cp -a "$live" "$dir.new/files$live"
    fi
  done
  mv "$dir.new" "$dir"
  systemctl reset-failed "$(unit "$id").timer" "$(unit "$id").service" 2>/dev/null || true
  systemd-run --quiet --unit="$(unit "$id")" --on-active="${seconds}s" --timer-property=AccuracySec=1s \
    --description="hardkit: revert unconfirmed change $id" "$0" revert "$id"
  for live in "$@"; do
    mkdir -p "$(dirname "$live")"
    mv -f "$STAGED/$id$live" "$live"
  done
  if ! sh -c "$reload"; then
    log err "change $id: reload failed; reverting now"
    systemctl stop "$(unit "$id").timer" 2>/dev/null || true
    revert "$id"
    exit 1
  fi
  log notice "change $id applied ($*); reverts in ${seconds}s unless a fresh login confirms it"
}

confirm() {
  id=$1
  if [ ! -d "$STATE/$id" ]; then
    # Too late: the timer already put the old configuration back. The deploy must not report success.
    log err "change $id cannot be confirmed: it is not pending (already reverted?)"
    exit 3
  fi
  systemctl stop "$(unit "$id").timer" 2>/dev/null || true
  rm -rf "${STATE:?}/$id"
  log notice "change $id confirmed by a fresh login"
}

revert() {
  id=$1 dir="$STATE/$1" reload=${2:-reload}
  [ -d "$dir" ] || return 0
  while IFS= read -r live; do
    if [ -e "$dir/files$live" ]; then
      cp -a "$dir/files$live" "$live"
    else
      rm -f "$live"
    fi
  done < "$dir/managed"
  # At boot the services start after us with the restored files: reloading them here would wait on them.
  if [ "$reload" = reload ]; then
    sh -c "$(cat "$dir/reload")" || log err "change $id: reload after revert failed"
  fi
  rm -rf "$dir"
  log warning "change $id reverted: no fresh login confirmed it in time"
}

case "${1:-}" in
  apply) shift; [ $# -ge 4 ] || { echo "usage: $0 apply ID SECONDS RELOAD LIVE..." >&2; exit 2; }; apply "$@" ;;
  confirm) confirm "$2" ;;
  revert) revert "$2" ;;
  revert-pending)
    [ -d "$STATE" ] || exit 0
    for d in "$STATE"/*; do
      if [ -d "$d" ]; then
        case "$d" in *.new) rm -rf "$d" ;; *) revert "$(basename "$d")" boot ;; esac
      fi
    done ;;
  pending) [ -d "$STATE" ] && ls "$STATE" || true ;;
  *) echo "usage: $0 apply|confirm|revert|revert-pending|pending ..." >&2; exit 2 ;;
esac
