#!/bin/sh
# The nightly backup, run by trial-backup.service (as root) with /etc/trial/trial.env and
# /etc/trial/owner.env (README "Deploying"): `trial backup create` into a new folder named by the UTC
# time, then `trial backup verify` of that folder (a restore into a scratch database, checked). Any
# failure fails the unit (`systemctl --failed`). Copy the folders off the server with your backup
# system; they hold no key (keep the keys apart). Nothing here deletes an old backup.
set -eu
APP_DIR=/srv/trial
BACKUPS=/var/backups/trial
dir="$BACKUPS/$(date -u +%Y-%m-%dT%H%M%SZ)"
"$APP_DIR/.venv/bin/trial" backup create --to "$dir"
"$APP_DIR/.venv/bin/trial" backup verify "$dir"
