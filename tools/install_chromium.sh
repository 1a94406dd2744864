#!/usr/bin/env bash
# Headless Chromium for the report tests (they load each HTML report in a real browser).
# `make test` runs this; it installs Debian's chromium package when no chromium is on PATH.
set -euo pipefail
if command -v chromium >/dev/null || command -v chromium-browser >/dev/null; then
  exit 0
fi
if ! command -v apt-get >/dev/null; then
  echo "error: the report tests need a headless Chromium: install it with your package manager" \
       "(e.g. 'brew install --cask chromium'), then rerun 'make test'." >&2
  exit 1
fi
sudo=""
if [ "$(id -u)" != 0 ]; then
  if ! command -v sudo >/dev/null; then
    echo "error: the report tests need Chromium: run 'apt-get install chromium' as root," \
         "then rerun 'make test'." >&2
    exit 1
  fi
  sudo="sudo"
fi
echo "Installing Debian's chromium (headless browser for the report tests) ..."
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq chromium >/dev/null
