#!/usr/bin/env bash
# Backs up mcp-local-provider's configuration and recent logs into one tar.gz, and deletes
# backups older than the retention period. Sessions are ephemeral by design: configuration
# (env file, API key file) and logs (audit log) are the only persistent state.
#
# Usage: deploy/backup.sh [RETENTION_DAYS]
# Settings (environment; the argument wins over BACKUP_RETENTION_DAYS):
#   BACKUP_RETENTION_DAYS  delete backup_*.tar.gz older than this many days   (30)
#   BACKUP_LOG_DAYS        include *.log files modified within this many days (7)
#   BACKUP_DIR             where archives go           (/var/backups/mcp-local-provider)
#   BACKUP_CONFIG_DIR      configuration to save       (/etc/mcp-local-provider)
#   BACKUP_LOGS_DIR        logs to save                (/var/log/mcp-local-provider)
# For a scripts/start.sh install, point the two at ~/.config/mcp-local-provider and its logs/.
# The archive holds the API key file: it is created mode 0600, keep it somewhere private.
# Cron example (daily at 03:15): 15 3 * * * /opt/mcp-local-provider/deploy/backup.sh 30
# (The names are BACKUP_*, not LOCAL_PROVIDER_*, because the services flag unknown
# LOCAL_PROVIDER_* variables as typos.)
set -euo pipefail

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; }
die() { printf 'backup: ERROR: %s\n' "$*" >&2; exit 1; }

case ${1:-} in
-h | --help) usage; exit 0 ;;
esac
(($# <= 1)) || die "too many arguments (see --help)"

retention_days=${1:-${BACKUP_RETENTION_DAYS:-30}}
log_days=${BACKUP_LOG_DAYS:-7}
backup_dir=${BACKUP_DIR:-/var/backups/mcp-local-provider}
config_dir=${BACKUP_CONFIG_DIR:-/etc/mcp-local-provider}
logs_dir=${BACKUP_LOGS_DIR:-/var/log/mcp-local-provider}

[[ $retention_days =~ ^[0-9]+$ ]] || die "retention days must be a whole number, got '$retention_days'"
[[ $log_days =~ ^[0-9]+$ ]] || die "BACKUP_LOG_DAYS must be a whole number, got '$log_days'"
[[ -d $config_dir || -d $logs_dir ]] \
    || die "neither '$config_dir' nor '$logs_dir' exists; set BACKUP_CONFIG_DIR / BACKUP_LOGS_DIR"

# Archives contain secrets: nothing this script creates is readable by others.
umask 077
mkdir -p -- "$backup_dir"

stamp=$(date +%Y%m%d_%H%M%S)
archive=$backup_dir/backup_$stamp.tar.gz
staging=$(mktemp -d "${TMPDIR:-/tmp}/mcp-local-provider-backup.XXXXXX")
trap 'rm -rf -- "$staging"' EXIT

# Stage under fixed names so the archive restores the same way whatever the source paths were.
if [[ -d $config_dir ]]; then
    mkdir -p -- "$staging/config"
    # -p keeps modes (the key file must stay 0600 on restore); the trailing /. copies dotfiles.
    cp -pR -- "$config_dir/." "$staging/config/"
else
    printf 'backup: warning: no config directory %s, skipped\n' "$config_dir" >&2
fi

if [[ -d $logs_dir ]]; then
    mkdir -p -- "$staging/logs"
    # Recent *.log files only (the seed's "last 7 days"); -print0 survives any file name.
    while IFS= read -r -d '' f; do
        rel=${f#"$logs_dir"/}
        mkdir -p -- "$staging/logs/$(dirname -- "$rel")"
        cp -p -- "$f" "$staging/logs/$rel"
    done < <(find "$logs_dir" -type f -name '*.log' -mtime "-$log_days" -print0)
else
    printf 'backup: warning: no logs directory %s, skipped\n' "$logs_dir" >&2
fi

# Write to a temporary name first: a half-written archive never looks like a backup.
tar -czf "$archive.partial" -C "$staging" .
mv -- "$archive.partial" "$archive"
printf 'backup: wrote %s (%s)\n' "$archive" "$(du -h -- "$archive" | cut -f1)"

# Retention: only our own archive names, only in the backup directory itself.
deleted=0
while IFS= read -r -d '' old; do
    rm -f -- "$old"
    deleted=$((deleted + 1))
done < <(find "$backup_dir" -maxdepth 1 -type f -name 'backup_*.tar.gz' -mtime "+$retention_days" -print0)
printf 'backup: removed %d archive(s) older than %s days\n' "$deleted" "$retention_days"

# Restore: systemctl stop mcp-local-provider-gateway mcp-local-provider-bridge-agent
#          tar -xzf backup_YYYYmmdd_HHMMSS.tar.gz -C /tmp/restore && cp -pR /tmp/restore/config/. /etc/mcp-local-provider/
#          systemctl start mcp-local-provider-bridge-agent mcp-local-provider-gateway
