# shellcheck shell=bash
# where the client examples' toolchains live (sourced by
# scripts/install-deps.sh, which installs them, and
# tests/examples/run_examples.sh, which uses them). everything sits outside
# the checkout, in the cache the other scripts use, so a clean clone on this
# machine finds them; go modules stay in go's module cache and maven's
# artifacts in ~/.m2, where those tools keep them.
#
#   go:     protoc-gen-go and protoc-gen-go-grpc at pinned versions, built
#           with `go install` into $examples_go_bin
#   python: a virtualenv of Debian's /usr/bin/python3 with
#           examples/python/requirements.txt from PyPI (grpcio-tools brings
#           its own protoc), named after the requirements' hash
#   java:   nothing here: maven downloads protoc and protoc-gen-grpc-java
#           (examples/java/pom.xml) into ~/.m2 on the first build
#
# needs: $root (the checkout).
examples_cache=${COMMERCE_CACHE:-$HOME/.cache/commerce}
examples_protoc_gen_go_version=v1.36.12
examples_protoc_gen_go_grpc_version=v1.6.2
examples_go_bin=$examples_cache/go-protoc-plugins-$examples_protoc_gen_go_version-$examples_protoc_gen_go_grpc_version/bin
examples_py_requirements=$root/examples/python/requirements.txt
examples_py_base=/usr/bin/python3
examples_py_venv_default() {
  local sum
  sum=$(sha256sum "$examples_py_requirements" | cut -c1-12)
  printf '%s/examples-venv-%s\n' "$examples_cache" "$sum"
}
examples_py_venv=${COMMERCE_EXAMPLES_VENV:-$(examples_py_venv_default)}
examples_py_python=$examples_py_venv/bin/python
# written last by install-deps.sh: the venv is complete
examples_py_stamp=$examples_py_venv/.commerce-complete
