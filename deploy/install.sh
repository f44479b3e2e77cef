#!/usr/bin/env bash
# Install edge-agent as a systemd service on Debian, Ubuntu or Raspberry Pi OS (arm64 or amd64).
# Run as root from a checkout:  sudo deploy/install.sh
# Idempotent: re-running upgrades the code and keeps /etc/edge-agent and /var/lib/edge-agent.
set -euo pipefail
[ "$(id -u)" -eq 0 ] || { echo "run as root (sudo deploy/install.sh)" >&2; exit 1; }
src="$(cd "$(dirname "$0")/.." && pwd)"
prefix=/opt/edge-agent

apt-get install -y -qq python3 python3-venv >/dev/null
id edge-agent >/dev/null 2>&1 || useradd --system --home /var/lib/edge-agent --shell /usr/sbin/nologin edge-agent
install -d -o edge-agent -g edge-agent -m 0750 /var/lib/edge-agent
install -d -m 0750 -g edge-agent /etc/edge-agent

install -d "$prefix"
cp -a "$src/pyproject.toml" "$src/README.md" "$src/edge_agent" "$src/simulators" "$src/config" "$prefix/"
python3 -m venv "$prefix/.venv"
"$prefix/.venv/bin/pip" install -q --upgrade pip
# editable: the profiles in $prefix/config/profiles are found beside the package
"$prefix/.venv/bin/pip" install -q -e "$prefix"

if [ ! -f /etc/edge-agent/config.yaml ]; then
    sed 's#^  path: edge-agent.db#  path: /var/lib/edge-agent/edge-agent.db#' "$src/config/example.yaml" > /etc/edge-agent/config.yaml
    chgrp edge-agent /etc/edge-agent/config.yaml; chmod 0640 /etc/edge-agent/config.yaml
    echo "wrote /etc/edge-agent/config.yaml from the example: edit it, then: edge-agent check -c /etc/edge-agent/config.yaml --probe"
fi
install -m 0644 "$src/deploy/edge-agent.service" /etc/systemd/system/edge-agent.service
systemctl daemon-reload
echo "installed. Start with: systemctl enable --now edge-agent ; logs: journalctl -u edge-agent -f"
