#!/usr/bin/env bash
# System packages the test suite needs beyond Python. Idempotent; run as root or with sudo
# available. Skips what is already installed.
#   - Debian's Prometheus server and promtool (tests/test_prometheus_scrape.py, tests/test_metrics*.py)
#   - Debian's Chromium and chromedriver (tests/test_console_e2e.py drives the web console headless)
set -euo pipefail

need=()
if command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; then
  echo "prometheus and promtool present: $(prometheus --version 2>&1 | head -n1)"
else
  need+=(prometheus)
fi
if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
  echo "chromium and chromedriver present: $(chromium --version 2>/dev/null | head -n1)"
else
  need+=(chromium chromium-driver)
fi
if [ "${#need[@]}" -eq 0 ]; then
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then
    SUDO="sudo"
  else
    echo "ci-system-deps: need root (or sudo) to apt-get install ${need[*]}" >&2
    exit 1
  fi
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# --no-install-recommends: the Prometheus server and promtool only (no node exporter or web assets);
# Chromium without its recommended extras (the tests run it headless)
$SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
# the Debian package may start a system service where systemd runs; the tests start their own
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet prometheus 2>/dev/null; then
  $SUDO systemctl stop prometheus || true
fi
for tool in prometheus chromium chromedriver; do
  if command -v "$tool" >/dev/null 2>&1; then echo "installed: $("$tool" --version 2>&1 | head -n1)"; fi
done
