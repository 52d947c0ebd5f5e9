#!/usr/bin/env bash
# generates the python stubs of the public api into OUT (default
# examples/python/gen, not committed) with grpcio-tools' own protoc:
#   examples/python/generate.sh [OUT]
# run it with the python of a venv holding requirements.txt (PYTHON=...).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
proto=$(cd "$here/../../proto" && pwd)
out=${1:-$here/gen}
mkdir -p "$out"
cd "$proto"
mapfile -t files < <(find commerce -name '*.proto' | sort)
"${PYTHON:-python3}" -m grpc_tools.protoc -I . --python_out="$out" --grpc_python_out="$out" \
  "${files[@]}"
