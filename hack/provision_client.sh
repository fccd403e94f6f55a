#!/usr/bin/env bash
# Provision one client: print (or, with --apply, apply) its WhatsAppAgent and Secret templates.
#
#   hack/provision_client.sh NAME PHONE_NUMBER_ID [released provision options...]
#   hack/provision_client.sh acme 106540352242922 --namespace acme --host acme.bots.example.com \
#       --faq 'When are you open?=Monday to Friday, 9:00 to 18:00.' --apply
#
# The old provision_client.sh created Deployments by hand; this one is a thin wrapper over
# `released provision` (bot/cli.py), which prints declarative manifests for the operator.
set -euo pipefail

if [ "$#" -lt 2 ]; then
  echo "usage: $0 NAME PHONE_NUMBER_ID [released provision options...]" >&2
  echo "       (see: released provision --help)" >&2
  exit 2
fi

name="$1"
phone="$2"
shift 2

if command -v released >/dev/null 2>&1; then
  exec released provision "$name" "$phone" "$@"
fi
# Not installed as a console script (e.g. a plain checkout): run the module from the repository.
root="$(cd "$(dirname "$0")/.." && pwd)"
export PYTHONPATH="$root:$root/operator${PYTHONPATH:+:$PYTHONPATH}"
exec python3 -m bot.cli provision "$name" "$phone" "$@"
