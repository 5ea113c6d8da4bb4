#!/bin/sh
# Headless Chromium and its WebDriver for the browser test of the HTML reports (tests/test_report.py).
# Idempotent: does nothing when both are on PATH already. Installs Debian's packages with apt-get (through
# sudo unless root); without apt-get it only says what to install, since the test then skips (fails under CI=true).
set -eu

if command -v chromedriver >/dev/null 2>&1 && { command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; }; then
  exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
  echo "install-browser: no apt-get here; install Chromium and a matching chromedriver yourself" >&2
  exit 0
fi

missing=""
for pkg in chromium chromium-driver; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing="$missing $pkg"
done
[ -n "$missing" ] || exit 0

SUDO=""
if [ "$(id -u)" != 0 ]; then
  command -v sudo >/dev/null 2>&1 || { echo "install-browser: need root or sudo to install$missing" >&2; exit 1; }
  SUDO=sudo
fi
echo "install-browser: installing$missing" >&2
$SUDO apt-get update -qq
# `env` because sudo drops the caller's environment; $missing is meant to split into package names.
# shellcheck disable=SC2086
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing
