#!/usr/bin/env bash
# Install edge-agent as a systemd service on Debian, Ubuntu or Raspberry Pi OS (arm64 or amd64).
#
#   sudo deploy/install.sh                       from a checkout, with network access
#   sudo deploy/install.sh --wheelhouse DIR      offline: DIR holds the edge_agent wheel and
#                                                every wheel deploy/requirements.lock names
#                                                (made by deploy/wheelhouse.sh elsewhere)
#
# The dependencies are the pinned, hashed ones of deploy/requirements.lock (pip --require-hashes:
# a file that differs from the one locked is refused); the agent is a built wheel, not an
# editable checkout. Idempotent: re-running upgrades the code and keeps /etc/edge-agent and
# /var/lib/edge-agent.
set -euo pipefail
[ "$(id -u)" -eq 0 ] || { echo "run as root (sudo deploy/install.sh)" >&2; exit 1; }
src="$(cd "$(dirname "$0")/.." && pwd)"
prefix=/opt/edge-agent
wheelhouse=""
while [ $# -gt 0 ]; do
    case "$1" in
        --wheelhouse) wheelhouse="$(cd "${2:?--wheelhouse needs a folder}" && pwd)"; shift 2 ;;
        *) echo "unknown argument: $1 (usage: install.sh [--wheelhouse DIR])" >&2; exit 2 ;;
    esac
done

if ! python3 -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    [ -z "$wheelhouse" ] || { echo "offline install needs python3 (3.11+) and python3-venv" >&2; exit 1; }
    apt-get install -y -qq python3 python3-venv >/dev/null
fi
if [ -z "$wheelhouse" ]; then
    wheelhouse="$(mktemp -d)"
    trap 'rm -rf "$wheelhouse"' EXIT
    "$src/deploy/wheelhouse.sh" "$wheelhouse"
fi
wheel="$(ls "$wheelhouse"/edge_agent-*.whl 2>/dev/null | sort -V | tail -1)"
[ -n "$wheel" ] || { echo "no edge_agent-*.whl in $wheelhouse" >&2; exit 1; }

id edge-agent >/dev/null 2>&1 || useradd --system --home /var/lib/edge-agent --shell /usr/sbin/nologin edge-agent
usermod -a -G dialout edge-agent
install -d -o edge-agent -g edge-agent -m 0750 /var/lib/edge-agent
install -d -m 0750 -g edge-agent /etc/edge-agent

install -d "$prefix"
python3 -m venv --clear "$prefix/.venv"
"$prefix/.venv/bin/pip" install -q --no-index --find-links "$wheelhouse" --require-hashes \
    -r "$src/deploy/requirements.lock"
"$prefix/.venv/bin/pip" install -q --no-index --no-deps "$wheel"
cp "$src/README.md" "$prefix/README.md"
"$prefix/.venv/bin/edge-agent" --version

if [ ! -f /etc/edge-agent/config.yaml ]; then
    sed 's#^  path: edge-agent.db#  path: /var/lib/edge-agent/edge-agent.db#' "$src/config/example.yaml" > /etc/edge-agent/config.yaml
    chgrp edge-agent /etc/edge-agent/config.yaml; chmod 0640 /etc/edge-agent/config.yaml
    echo "wrote /etc/edge-agent/config.yaml from the example: edit it, then: edge-agent check -c /etc/edge-agent/config.yaml --probe"
fi
install -m 0644 "$src/deploy/edge-agent.service" /etc/systemd/system/edge-agent.service
if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
    systemctl daemon-reload
    echo "installed. Start with: systemctl enable --now edge-agent ; logs: journalctl -u edge-agent -f"
else
    echo "installed in $prefix (systemd is not running here: the unit is in /etc/systemd/system)"
fi
