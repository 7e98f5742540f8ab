#!/usr/bin/env bash
# System packages the test suite needs beyond Python: Debian's Prometheus server and
# promtool (tests/test_prometheus_scrape.py, tests/test_metrics*.py). Idempotent; run as
# root or with sudo available. Skips quietly when the binaries are already there.
set -euo pipefail

if command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; then
  echo "prometheus and promtool present: $(prometheus --version 2>&1 | head -n1)"
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then
    SUDO="sudo"
  else
    echo "ci-system-deps: need root (or sudo) to apt-get install prometheus" >&2
    exit 1
  fi
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# --no-install-recommends: the server and promtool only, no node exporter or web assets
$SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null
# the Debian package may start a system service where systemd runs; the tests start their own
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet prometheus 2>/dev/null; then
  $SUDO systemctl stop prometheus || true
fi
echo "installed: $(prometheus --version 2>&1 | head -n1)"
