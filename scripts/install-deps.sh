#!/usr/bin/env bash
# install every package the build, the tests and the quick start need.
# idempotent: when everything is already present it only checks and exits.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)

DEBS=(
  build-essential cmake pkg-config ninja-build
  libgrpc-dev protobuf-compiler-grpc protobuf-compiler libprotobuf-dev
  libprotobuf-c-dev protobuf-c-compiler
  libpq-dev postgresql postgresql-contrib
  librdkafka-dev kcat
  libuv1-dev check libsubunit-dev
  libjwt-dev libjansson-dev libhttp-parser-dev libssl-dev libcurl4-openssl-dev
  python3-grpcio python3-protobuf python3-jsonschema python3-venv
  clang-format clang-tidy valgrind clang-14 libclang-rt-14-dev
  default-jre-headless maven
  procps iproute2 curl openssl
)

missing=()
for p in "${DEBS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "install-deps: installing ${missing[*]}"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# buf (proto lint) ships as an npm package with a native binary inside
tools="$here/.tools"
if [ ! -x "$tools/node_modules/.bin/buf" ]; then
  echo "install-deps: installing @bufbuild/buf into .tools/"
  mkdir -p "$tools"
  (cd "$tools" && npm install --silent --no-audit --no-fund --prefix "$tools" @bufbuild/buf@1.75.0 >/dev/null)
fi
# grpcurl (tests/integration/test_reflection.sh, README "Calling the
# services"): built with go from the module proxy once per machine into
# ~/.cache/commerce/grpcurl-<version>, linked into .tools/bin
grpcurl_version=v1.9.4
grpcurl_cache="${XDG_CACHE_HOME:-$HOME/.cache}/commerce/grpcurl-$grpcurl_version"
if [ ! -x "$grpcurl_cache/grpcurl" ] && command -v go >/dev/null; then
  echo "install-deps: building grpcurl $grpcurl_version into $grpcurl_cache"
  mkdir -p "$grpcurl_cache"
  GOBIN="$grpcurl_cache" GOPATH="$grpcurl_cache/gopath" GOFLAGS=-modcacherw \
    go install "github.com/fullstorydev/grpcurl/cmd/grpcurl@$grpcurl_version"
  rm -rf "$grpcurl_cache/gopath"
fi
if [ -x "$grpcurl_cache/grpcurl" ]; then
  mkdir -p "$tools/bin"
  ln -sf "$grpcurl_cache/grpcurl" "$tools/bin/grpcurl"
fi
# the partner reference receivers (kafka/partner/receivers/): a virtualenv
# of Debian's python3 with requirements.txt from PyPI, outside the checkout
# (scripts/lib/partner-venv.sh says where); scripts/partner-python runs it.
# built under a lock (checkouts share it), into place, stamped when complete
# shellcheck source=scripts/lib/partner-venv.sh
root=$here
. "$here/scripts/lib/partner-venv.sh"
if [ ! -f "$partner_stamp" ]; then
  mkdir -p "$(dirname "$partner_venv")"
  (
    flock 9
    if [ ! -f "$partner_stamp" ]; then
      echo "install-deps: building the partner receivers' venv at $partner_venv"
      rm -rf "$partner_venv"
      "$partner_base_python" -m venv "$partner_venv"
      "$partner_venv/bin/python" -m pip install --quiet --disable-pip-version-check \
        --no-input -r "$partner_requirements"
      "$partner_venv/bin/python" -c 'import confluent_kafka, jsonschema'
      sha256sum "$partner_requirements" >"$partner_stamp"
    fi
  ) 9>"$partner_venv.lock"
fi
# the client examples (examples/): protoc-gen-go and protoc-gen-go-grpc at
# pinned versions with `go install`, and a venv of Debian's python3 with
# grpcio-tools and the status protos from PyPI, both outside the checkout
# (scripts/lib/examples-tools.sh says where); java needs only maven, which
# fetches protoc and the grpc plugin itself. skipped, saying so, without go
# shellcheck source=scripts/lib/examples-tools.sh
. "$here/scripts/lib/examples-tools.sh"
if command -v go >/dev/null 2>&1; then
  if [ ! -x "$examples_go_bin/protoc-gen-go" ] || [ ! -x "$examples_go_bin/protoc-gen-go-grpc" ]; then
    echo "install-deps: installing protoc-gen-go $examples_protoc_gen_go_version and protoc-gen-go-grpc $examples_protoc_gen_go_grpc_version into $examples_go_bin"
    mkdir -p "$examples_go_bin"
    GOBIN=$examples_go_bin GOFLAGS=-mod=mod go install \
      "google.golang.org/protobuf/cmd/protoc-gen-go@$examples_protoc_gen_go_version"
    GOBIN=$examples_go_bin GOFLAGS=-mod=mod go install \
      "google.golang.org/grpc/cmd/protoc-gen-go-grpc@$examples_protoc_gen_go_grpc_version"
  fi
else
  echo "install-deps: no go on PATH: the go client example (examples/go) will be skipped"
fi
if [ ! -f "$examples_py_stamp" ]; then
  mkdir -p "$(dirname "$examples_py_venv")"
  (
    flock 9
    if [ ! -f "$examples_py_stamp" ]; then
      echo "install-deps: building the python client example's venv at $examples_py_venv"
      rm -rf "$examples_py_venv"
      "$examples_py_base" -m venv "$examples_py_venv"
      "$examples_py_python" -m pip install --quiet --disable-pip-version-check \
        --no-input -r "$examples_py_requirements"
      "$examples_py_python" -c 'import grpc, grpc_tools.protoc, grpc_status.rpc_status, google.rpc.error_details_pb2'
      sha256sum "$examples_py_requirements" >"$examples_py_stamp"
    fi
  ) 9>"$examples_py_venv.lock"
fi
echo "install-deps: ok"
