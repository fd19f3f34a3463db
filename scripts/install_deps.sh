#!/usr/bin/env bash
# Installs (as root, with apt) whatever pemoe's build needs and this machine lacks; a no-op when all is there.
# Debian 12 packages only; nothing is downloaded at build time.
set -euo pipefail
packages=(g++ cmake ninja-build libeigen3-dev libxtensor-dev xtl-dev catch2 libbenchmark-dev nlohmann-json3-dev
          libcli11-dev libpng-dev doxygen libgomp1 clang-format libdnnl-dev ocl-icd-opencl-dev liblapacke-dev libopenblas-dev
          wamerican iso-codes fortunes fortunes-min clang libclang-rt-14-dev libomp-dev)  # ocl-icd-opencl-dev: dnnl-config.cmake requires OpenCL; data: the task suite (data/tasks.hpp), the examples' text; clang with its sanitizer runtime and OpenMP: CI's second compiler (scripts/test.sh)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "pemoe: all build dependencies present"
  exit 0
fi
echo "pemoe: installing ${missing[*]}"
if [ "$(id -u)" -ne 0 ]; then
  echo "pemoe: installing packages needs root; run this script as root (or: sudo apt-get install ${missing[*]})" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "pemoe: dependencies installed"
