#!/usr/bin/env bash
# Installs what robrep needs on a fresh Debian/Ubuntu machine: FFCV's system packages, a venv, and the
# project's dependencies. Safe to rerun: apt runs only for missing packages, pip only when asked by make.
set -euo pipefail
venv=${1:-.venv}
apt_pkgs=(pkg-config libopencv-dev libturbojpeg0-dev)

if ! dpkg -s "${apt_pkgs[@]}" >/dev/null 2>&1; then
    sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "[install] apt: ${apt_pkgs[*]} (FFCV builds against them)"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${apt_pkgs[@]}"
fi

if [ ! -x "$venv/bin/python" ]; then
    echo "[install] venv: $venv"
    python3 -m venv "$venv"
fi
echo "[install] pip: the project's dependencies (torch comes from the machine's local wheels)"
"$venv/bin/python" -m pip install -q --disable-pip-version-check ".[test]"
# Test-only: the MadryLab `robustness` library, the reference our PGD step and checkpoint import are checked
# against. Its attack steps and model definitions need only torch; its declared dependencies (cox, tables,
# GPUtil, ...) are not needed for that, so it is installed without them.
"$venv/bin/python" -m pip install -q --disable-pip-version-check --no-deps "robustness==1.2.1.post2"
