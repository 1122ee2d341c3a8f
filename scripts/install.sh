#!/usr/bin/env bash
# Install anomalib-modmap and everything it needs on a fresh Debian machine.
#   bash scripts/install.sh        the package and its runtime dependencies
#   bash scripts/install.sh test   the same plus the test tools
set -euo pipefail
cd "$(dirname "$0")/.."

# open3d loads libusb at import time; Debian ships it as libusb-1.0-0.
if ! ldconfig -p | grep -q 'libusb-1.0.so.0'; then
    sudo_cmd=""
    if [ "$(id -u)" -ne 0 ]; then sudo_cmd="sudo"; fi
    $sudo_cmd apt-get update -qq
    $sudo_cmd apt-get install -y -qq libusb-1.0-0
fi

extra=""
if [ "${1:-}" = "test" ]; then extra="[test]"; fi
python3 -m pip install -q -e ".${extra}"
