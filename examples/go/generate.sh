#!/usr/bin/env bash
# generates the go stubs of the public api into examples/go/gen (not
# committed) with protoc, protoc-gen-go and protoc-gen-go-grpc (on PATH;
# scripts/install-deps.sh installs the pinned versions, see
# scripts/lib/examples-tools.sh). the files' go_package puts them under
# github.com/commerce/commerce/gen/go, which go.mod replaces with ./gen.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
proto=$(cd "$here/../../proto" && pwd)
out=$here/gen
rm -rf "$out.tmp"
mkdir -p "$out.tmp"
cd "$proto"
mapfile -t files < <(find commerce -name '*.proto' | sort)
protoc -I . \
  --go_out="$out.tmp" --go_opt=module=github.com/commerce/commerce/gen/go \
  --go-grpc_out="$out.tmp" --go-grpc_opt=module=github.com/commerce/commerce/gen/go \
  "${files[@]}"
cat >"$out.tmp/go.mod" <<'MOD'
module github.com/commerce/commerce/gen/go

go 1.22
MOD
rm -rf "$out"
mv "$out.tmp" "$out"
