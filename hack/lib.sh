# shellcheck shell=bash
# Shared helpers of the hack/ scripts (sourced, not run): logging, root, apt packages.
#
# A script sets LOG_TAG before sourcing, e.g. LOG_TAG=control-plane; log lines then read
# "[control-plane 12:00:00] message" on stderr.

log() { printf '[%s %s] %s\n' "${LOG_TAG:-hack}" "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

as_root() {
  if [[ $(id -u) -eq 0 ]]; then
    "$@"
  elif command -v sudo >/dev/null; then
    sudo "$@"
  else
    die "needs root (or sudo) to run: $*"
  fi
}

APT_UPDATED=0
apt_update_once() {
  if [[ $APT_UPDATED -eq 0 ]]; then
    log "apt-get update"
    as_root apt-get -o DPkg::Lock::Timeout=600 update -q >&2
    APT_UPDATED=1
  fi
}

# The Debian packages among "$@" that are not installed, one per line.
missing_apt_packages() {
  local p
  for p in "$@"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
      echo "$p"
    fi
  done
}

# Install the Debian packages among "$@" that are missing (nothing, and no apt-get update, when
# all are there).
ensure_apt_packages() {
  local missing
  mapfile -t missing < <(missing_apt_packages "$@")
  if ((${#missing[@]})); then
    apt_update_once
    log "apt-get install ${missing[*]}"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -q \
      --no-install-recommends "${missing[@]}" >&2
  fi
}
