#!/usr/bin/env bash
# Regenerates src/copex_client/_gen from the repository's proto/ with pinned
# generators, so CI can check the checked-in stubs match (`--check`).
# Needs grpcio-tools and mypy-protobuf at the versions below on PATH's python.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
proto="$here/../../proto"
python=${PYTHON:-python3}
want_tools=1.85.1
want_mypy=5.1.0
have_tools=$("$python" -c 'import importlib.metadata as m; print(m.version("grpcio-tools"))')
have_mypy=$("$python" -c 'import importlib.metadata as m; print(m.version("mypy-protobuf"))')
if [ "$have_tools" != "$want_tools" ] || [ "$have_mypy" != "$want_mypy" ]; then
  echo "generate.sh needs grpcio-tools==$want_tools mypy-protobuf==$want_mypy (have $have_tools, $have_mypy)" >&2
  exit 1
fi

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
# protoc-gen-mypy is a script beside the python that has mypy-protobuf.
PATH="$(dirname "$("$python" -c 'import sys; print(sys.executable)')"):$PATH" \
  "$python" -m grpc_tools.protoc -I"$proto" \
  --python_out="$out" --grpc_python_out="$out" --mypy_out="$out" --mypy_grpc_out="$out" \
  "$proto"/copex/v1/*.proto >"$out/.log" 2>&1 || { cat "$out/.log" >&2; exit 1; }
rm "$out/.log"
# The stubs import each other as the top-level package `copex.v1`; inside
# this package they live under copex_client._gen.
for f in "$out"/copex/v1/*; do
  sed -i 's/^from copex\.v1 import /from copex_client._gen.copex.v1 import /' "$f"
done
# No services are declared in these files: their _grpc modules are empty.
for f in "$out"/copex/v1/*_grpc.py "$out"/copex/v1/*_grpc.pyi; do
  grep -q 'Stub' "$f" || rm "$f"
done
for d in "$out/copex" "$out/copex/v1"; do
  printf '"""Generated from proto/ by clients/python/generate.sh; do not edit."""\n' >"$d/__init__.py"
done
printf '"""Stubs generated from proto/ by clients/python/generate.sh; do not edit."""\n' >"$out/__init__.py"

target="$here/src/copex_client/_gen"
if [ "${1:-}" = "--check" ]; then
  if ! diff -r "$out" "$target"; then
    echo "clients/python/src/copex_client/_gen does not match proto/: run clients/python/generate.sh" >&2
    exit 1
  fi
  echo "generated Python stubs match proto/"
else
  rm -rf "$target"
  cp -r "$out" "$target"
  echo "wrote $target"
fi
