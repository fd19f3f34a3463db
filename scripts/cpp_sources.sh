#!/usr/bin/env bash
# Prints pemoe's C++ and CUDA source files, NUL-separated (for `xargs -0`), relative to the repository root:
# the list scripts/test.sh checks with clang-format.
# - In a git checkout (and git installed): the files git tracks that exist in the work tree.
# - Anywhere else (a source tarball, no .git, or no git at all): every *.hpp, *.cpp, *.cu, *.cuh under
#   include/ tools/ tests/ bench/ examples/ docs/ test_package/ cmake/, leaving out build directories (build*,
#   cmake-build*) and hidden ones.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd -P)
# Each git call has the find fallback below: no git, not a checkout, or git refusing the tree (e.g. an unsafe
# owner) all land there.
if command -v git >/dev/null 2>&1 && [ "$(git rev-parse --show-toplevel 2>/dev/null)" = "$root" ] &&
   tracked=$(git ls-files -z -- '*.hpp' '*.cpp' '*.cu' '*.cuh' 2>/dev/null | tr '\0' '\n'); then
  while IFS= read -r f; do [ -n "$f" ] && [ -e "$f" ] && printf '%s\0' "$f"; done <<< "$tracked"
  exit 0
fi
dirs=()
for d in include tools tests bench examples docs test_package cmake; do
  if [ -d "$d" ]; then dirs+=("$d"); fi
done
if [ ${#dirs[@]} -eq 0 ]; then exit 0; fi
find "${dirs[@]}" -type d \( -name 'build*' -o -name 'cmake-build*' -o -name '.*' \) -prune -o \
     -type f \( -name '*.hpp' -o -name '*.cpp' -o -name '*.cu' -o -name '*.cuh' \) -print0 | sort -z
