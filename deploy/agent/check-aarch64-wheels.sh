#!/bin/sh
# Does everything the gateway installs come as a wheel for Raspberry Pi OS (aarch64,
# CPython 3.11)? Builds this checkout's wheel and asks pip to download it with its
# dependencies (and the pkcs11 extra) for that platform, binary wheels only: pip fails if
# any package lacks one. Needs the network (PyPI); not part of `make test` (the offline
# check of the agent's dependency list is tests/agent/test_agent_dependencies.py).
#
#   deploy/agent/check-aarch64-wheels.sh [OUT_DIR]      (default: a temporary directory)
set -eu
here=$(cd "$(dirname "$0")/../.." && pwd)
py=${PYTHON:-"$here/.venv/bin/python"}
out=${1:-$(mktemp -d)}
mkdir -p "$out"
if ! "$py" -m pip wheel --quiet --no-deps -w "$out" "$here" >"$out/build.log" 2>&1; then
    cat "$out/build.log" >&2
    echo "building the stationseal wheel failed" >&2
    exit 1
fi
whl=$(ls "$out"/stationseal-*.whl | head -n 1)
"$py" -m pip download --quiet -d "$out" --only-binary=:all: \
    --platform manylinux2014_aarch64 --platform manylinux_2_17_aarch64 \
    --platform manylinux_2_28_aarch64 \
    --python-version 3.11 --implementation cp --abi cp311 --abi abi3 --abi none \
    "$whl[pkcs11]"
echo "every dependency has a wheel for aarch64 / CPython 3.11 (in $out):"
for f in "$out"/*.whl; do
    case "$f" in
        *-none-any.whl) kind="pure Python" ;;
        *aarch64*.whl) kind="binary, aarch64" ;;
        *) kind="OTHER PLATFORM" ;;
    esac
    printf '  %-70s %s\n' "$(basename "$f")" "$kind"
done
