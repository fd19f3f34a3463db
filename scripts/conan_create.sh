#!/usr/bin/env bash
# Creates the Conan 2 package of pemoe offline and runs test_package/ against it (scripts/test.sh runs this):
#   bash scripts/conan_create.sh [extra `conan create` arguments, e.g. -o "pemoe/*:with_dnnl=True"]
#
# - A throw-away CONAN_HOME (nothing of ~/.conan2 is read or written), with the detected default profile and
#   no remote: conancenter is removed, so nothing is downloaded.
# - The host profile's [platform_requires] point eigen, xtensor, nlohmann_json (and onednn) at the Debian
#   packages scripts/install_deps.sh installs, at the versions dpkg reports; find_package finds their own
#   CMake config files.
# - conan itself: the one on PATH (Conan 2); otherwise it is installed by name from PyPI into a virtual
#   environment under build-conan/ (this needs the network once).
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
export CONAN_HOME=$tmp/conan-home

conan_bin=""
if command -v conan >/dev/null 2>&1 && conan --version 2>/dev/null | grep -q "version 2\."; then
  conan_bin=$(command -v conan)
else
  venv=build-conan/venv
  if [ ! -x "$venv/bin/conan" ]; then
    echo "pemoe: Conan 2 is not on PATH; installing it into $venv"
    if ! python3 -c "import venv, ensurepip" 2>/dev/null; then
      if [ "$(id -u)" -ne 0 ]; then
        echo "pemoe: creating a Python virtual environment needs python3-venv; run as root or install it" >&2
        exit 1
      fi
      export DEBIAN_FRONTEND=noninteractive
      apt-get update -qq
      apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
    fi
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install -q "conan>=2,<3"
  fi
  conan_bin=$PWD/$venv/bin/conan
fi

# The Debian version of a package without epoch and revision ("1:3.4.0-4" -> "3.4.0").
deb_version() {
  dpkg-query -W -f='${Version}' "$1" 2>/dev/null | sed -e 's/^[0-9]*://' -e 's/-[^-]*$//' -e 's/[+~].*$//'
}
eigen=$(deb_version libeigen3-dev)
xtensor=$(deb_version libxtensor-dev)
json=$(deb_version nlohmann-json3-dev)
for v in eigen xtensor json; do
  if [ -z "${!v}" ]; then
    echo "pemoe: the Debian package for $v is not installed (run scripts/install_deps.sh)" >&2
    exit 1
  fi
done

"$conan_bin" profile detect --name default >/dev/null 2>&1
"$conan_bin" remote remove conancenter >/dev/null 2>&1 || true
{
  echo "include(default)"
  echo "[platform_requires]"
  echo "eigen/$eigen"
  echo "xtensor/$xtensor"
  echo "nlohmann_json/$json"
  dnnl=$(deb_version libdnnl-dev)
  if [ -n "$dnnl" ]; then echo "onednn/$dnnl"; fi
  echo "[conf]"
  # test_package's build goes to the temporary directory, and no CMakeUserPresets.json into the tree.
  echo "tools.cmake.cmake_layout:test_folder=$tmp/test_package"
  echo "tools.cmake.cmaketoolchain:user_presets="
  if command -v ninja >/dev/null 2>&1; then echo "tools.cmake.cmaketoolchain:generator=Ninja"; fi
} >"$tmp/debian"
echo "pemoe: conan create (Conan $("$conan_bin" --version | sed 's/.* //'), CONAN_HOME=$CONAN_HOME, no remote)"
sed 's/^/  profile: /' "$tmp/debian"
"$conan_bin" create . --profile:host="$tmp/debian" --profile:build=default --build=missing "$@"
