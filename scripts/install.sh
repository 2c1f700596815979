#!/usr/bin/env bash
# Installs what robrep needs on a fresh Debian/Ubuntu machine: FFCV's system packages (and a compiler and Python
# headers where the image lacks them), a venv, and the project's dependencies at the versions of constraints.txt.
# The same script serves laptops, CI, the cluster launcher's setup_commands and the Dockerfile.
# Safe to rerun: apt runs only for missing packages, pip only when asked by make.
set -euo pipefail
venv=${1:-.venv}
here=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-python3}
apt_pkgs=(pkg-config libopencv-dev libturbojpeg0-dev)
command -v cc >/dev/null 2>&1 || apt_pkgs+=(build-essential)
"$python" -c 'import os, sysconfig; raise SystemExit(not os.path.exists(sysconfig.get_paths()["include"] + "/Python.h"))' \
    || apt_pkgs+=(python3-dev)
"$python" -c 'import ensurepip' 2>/dev/null || apt_pkgs+=(python3-venv)

if ! dpkg -s "${apt_pkgs[@]}" >/dev/null 2>&1; then
    sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "[install] apt: ${apt_pkgs[*]} (FFCV builds against them)"
    # On a fresh cloud node unattended-upgrades may hold the dpkg lock for minutes: wait for it, don't fail.
    $sudo apt-get -o DPkg::Lock::Timeout=600 update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends \
        "${apt_pkgs[@]}"
fi

if [ ! -x "$venv/bin/python" ]; then
    echo "[install] venv: $venv"
    "$python" -m venv "$venv"
fi
echo "[install] pip: the project's dependencies at constraints.txt's versions (torch from the machine's local wheels)"
"$venv/bin/python" -m pip install -q --disable-pip-version-check -c "$here/constraints.txt" "$here[test]"
# Test-only: the MadryLab `robustness` library, the reference our PGD step and checkpoint import are checked
# against. Its attack steps and model definitions need only torch; its declared dependencies (cox, tables,
# GPUtil, ...) are not needed for that, so it is installed without them.
"$venv/bin/python" -m pip install -q --disable-pip-version-check --no-deps "robustness==1.2.1.post2"
# jobs.evaluate's independent cross-check: AutoAttack's APGD from `torchattacks`. It imports only torch, numpy, scipy
# and tqdm (all above); its declared `requests~=2.25.1` pin would downgrade what Ray needs, so it too comes without
# its declared dependencies.
"$venv/bin/python" -m pip install -q --disable-pip-version-check --no-deps "torchattacks==3.5.1"
# Test-only: RobustBench's model zoo, whose own classes the robustbench.* import is checked against. Its declared
# dependencies pin timm==1.0.9 and pull its evaluation and download tools (autoattack, which PyPI lacks under that
# name, gdown, ...); robrep imports only robustbench.model_zoo, which needs torch, timm, geotorch and torchdiffeq.
"$venv/bin/python" -m pip install -q --disable-pip-version-check --no-deps \
    "robustbench==1.1.1" "geotorch==0.4.0" "torchdiffeq==0.2.5"
