#!/usr/bin/env bash
# checks the helm chart k8s/commerce offline:
#   helm lint --strict (default and production values);
#   helm template (default and production) | kubeconform -strict against
#   offline schemas (PyPI kubernetes-validate), for every Kubernetes
#   version in K8S_VERSIONS;
#   values.schema.json refuses each planted bad value (k8s/tests/bad-values/)
#   with the message written beside it;
#   helm-unittest suites (k8s/commerce/tests);
#   promtool check rules and test rules (k8s/tests/prometheus-rules.test.yaml);
#   every metric of the alerts and dashboards is one the source registers;
#   the chart's knob files agree with the binaries (when BIN_DIR has them);
#   k8s/README.md's values table agrees with values.yaml;
#   helm install (default values) and upgrade (production values) into a
#   local kube-apiserver + etcd, hooks admitted dry-run (scripts/k8s-cluster.sh).
# it installs its own tools, cached outside the clone under
# $HOME/.cache/commerce/<tool>-<version> (a cold machine builds helm once,
# ~1.5 min).
#
#   scripts/k8s-check.sh [--tools-only] [BIN_DIR]    (default build/bin)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
tools_only=0
if [ "${1:-}" = --tools-only ]; then
  tools_only=1
  shift
fi
bin=${1:-$root/build/bin}
chart=$root/k8s/commerce

HELM_VERSION=v3.21.4
KUBECONFORM_VERSION=v0.8.0
KUBERNETES_VALIDATE_VERSION=1.37.0
PROMETHEUS_VERSION=v0.316.0
HELM_UNITTEST_VERSION=v1.1.2
K8S_VERSIONS=${K8S_VERSIONS:-"1.30.0 1.37.0"}
cache=${COMMERCE_CACHE:-$HOME/.cache/commerce}
mkdir -p "$cache"

# go install into a versioned directory; a finished build is kept, a broken
# one is not (the binary is moved in last)
go_tool() {
  local name=$1 pkg=$2 version=$3 dir="$cache/$1-$3"
  if [ ! -x "$dir/$name" ]; then
    echo "k8s-check: building $name $version into $dir" >&2
    mkdir -p "$dir.tmp"
    GOBIN="$dir.tmp" go install "$pkg@$version"
    mkdir -p "$dir"
    mv "$dir.tmp/$name" "$dir/$name"
    rm -rf "$dir.tmp"
  fi
  echo "$dir/$name"
}
helm=$(go_tool helm helm.sh/helm/v3/cmd/helm "$HELM_VERSION")
kubeconform=$(go_tool kubeconform github.com/yannh/kubeconform/cmd/kubeconform "$KUBECONFORM_VERSION")
# promtool: ~4 min cold
promtool=$(go_tool promtool github.com/prometheus/prometheus/cmd/promtool "$PROMETHEUS_VERSION")

# helm-unittest: `go install` refuses it (replace directives in its go.mod),
# so build it inside a copy of its module; run as a binary, not a plugin
unittest=$cache/helm-unittest-$HELM_UNITTEST_VERSION/helm-unittest
if [ ! -x "$unittest" ]; then
  echo "k8s-check: building helm-unittest $HELM_UNITTEST_VERSION" >&2
  dir=$cache/helm-unittest-$HELM_UNITTEST_VERSION
  rm -rf "$dir.tmp"
  mkdir -p "$dir.tmp"
  src=$(go mod download -json "github.com/helm-unittest/helm-unittest@$HELM_UNITTEST_VERSION" |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["Dir"])')
  cp -r "$src" "$dir.tmp/src"
  chmod -R u+w "$dir.tmp/src"
  (cd "$dir.tmp/src" && go build -o "$dir.tmp/helm-unittest" ./cmd/helm-unittest)
  mkdir -p "$dir"
  mv "$dir.tmp/helm-unittest" "$unittest"
  rm -rf "$dir.tmp"
fi

# the JSON schemas of kubernetes-validate, rewritten for kubeconform: no
# "$id", and "$ref": "/api/_definitions.json#..." made relative
schemas=$cache/k8s-schemas-$KUBERNETES_VALIDATE_VERSION
if [ ! -f "$schemas/.done" ]; then
  echo "k8s-check: fetching kubernetes-validate $KUBERNETES_VALIDATE_VERSION schemas" >&2
  rm -rf "$schemas" "$schemas.tmp"
  mkdir -p "$schemas.tmp"
  python3 -m pip download --quiet --no-deps --only-binary=:all: \
    -d "$schemas.tmp/wheel" "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
  unzip -q "$schemas.tmp"/wheel/*.whl -d "$schemas.tmp/unpacked"
  python3 - "$schemas.tmp/unpacked" "$schemas.tmp/out" <<'PY'
import json, os, sys
src, out = sys.argv[1], sys.argv[2]
base = os.path.join(src, "kubernetes_validate", "kubernetes-json-schema")
def fix(node):
    if isinstance(node, dict):
        node.pop("$id", None)
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("/api/_definitions.json"):
            node["$ref"] = ref[len("/api/"):]
        for v in node.values():
            fix(v)
    elif isinstance(node, list):
        for v in node:
            fix(v)
n = 0
for d in sorted(os.listdir(base)):
    for dirpath, _, files in os.walk(os.path.join(base, d)):
        for f in files:
            if not f.endswith(".json"):
                continue
            p = os.path.join(dirpath, f)
            rel = os.path.relpath(p, os.path.join(base, d))
            with open(p) as fh:
                doc = json.load(fh)
            fix(doc)
            # flatten: kubeconform looks for DIR/<kind>.json
            dst = os.path.join(out, d, os.path.basename(rel))
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            with open(dst, "w") as fh:
                json.dump(doc, fh)
            n += 1
print(f"k8s-check: {n} schema files", file=sys.stderr)
PY
  mv "$schemas.tmp/out" "$schemas"
  rm -rf "$schemas.tmp"
  touch "$schemas/.done"
fi
[ "$tools_only" = 1 ] && { echo "k8s-check: tools ready in $cache"; exit 0; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fail=0
step() { echo "== $*"; }

step "knob files against the binaries"
if ls "$bin"/commerce-order "$bin"/commerce-inventory "$bin"/commerce-settlement "$bin"/commerce-commission >/dev/null 2>&1; then
  "$root/scripts/k8s-knobs.sh" --check "$bin" || fail=1
else
  echo "k8s-check: no binaries in $bin: knob files not compared (build first)"
fi

step "values table of k8s/README.md against values.yaml"
python3 "$root/scripts/k8s-values-table.py" --check || fail=1

step "helm lint --strict"
for values in "$chart/values.yaml" "$chart/values-production.yaml" "$root"/k8s/tests/good-values/*.yaml; do
  "$helm" lint --strict "$chart" -f "$values" >"$work/lint.out" 2>&1 || {
    cat "$work/lint.out"
    echo "k8s-check: helm lint failed with ${values#"$root"/}"
    fail=1
  }
done
echo "lint: ok"

step "helm-unittest (k8s/commerce/tests)"
"$unittest" --color=false -f 'tests/*_test.yaml' "$chart" || fail=1

step "promtool: the alert rules and their tests"
"$promtool" check rules "$chart/files/prometheus-rules.yaml" || fail=1
# margin-alert.test.yaml: series scraped from a real run of order (a flash
# sale under cost), written by tests/integration/test_order_margin.c
"$promtool" test rules "$root/k8s/tests/prometheus-rules.test.yaml" \
  "$root/k8s/tests/margin-alert.test.yaml" "$root/k8s/tests/margin-threshold.test.yaml" || fail=1

step "the alerts' and dashboards' metrics exist"
python3 "$root/scripts/k8s-metrics-check.py" || fail=1

# the kinds of the Prometheus operator have no schema offline
skip=ServiceMonitor,PrometheusRule
for kv in $K8S_VERSIONS; do
  for values in "$chart/values.yaml" "$chart/values-production.yaml" "$root"/k8s/tests/good-values/*.yaml; do
    step "helm template (${values#"$root"/}) | kubeconform -strict, Kubernetes $kv"
    if ! "$helm" template commerce "$chart" --kube-version "$kv" -f "$values" >"$work/rendered.yaml"; then
      fail=1
      continue
    fi
    "$kubeconform" -strict -summary -kubernetes-version "$kv" -skip "$skip" \
      -schema-location "$schemas/{{ .NormalizedKubernetesVersion }}-local{{ .StrictSuffix }}/{{ .ResourceKind }}{{ .KindSuffix }}.json" \
      "$work/rendered.yaml" || fail=1
  done
done

# each planted bad value must be refused, with the message its first line
# names ("# expect: ..."): by values.schema.json or by the templates' checks
step "bad values refused"
kv=${K8S_VERSIONS%% *}
for bad in "$root"/k8s/tests/bad-values/*.yaml; do
  expect=$(sed -n '1s/^# expect: //p' "$bad")
  name=${bad##*/}
  if "$helm" template commerce "$chart" --kube-version "$kv" -f "$bad" >/dev/null 2>"$work/bad.err"; then
    echo "FAIL $name: accepted"
    fail=1
  elif ! grep -qF -- "$expect" "$work/bad.err"; then
    echo "FAIL $name: refused, but without \"$expect\":"
    sed 's/^/    /' "$work/bad.err"
    fail=1
  else
    echo "ok   $name: $(grep -F -- "$expect" "$work/bad.err" | head -1 | sed 's/^ *//' | cut -c1-150)"
  fi
done

# a real API server (etcd + kube-apiserver, no kubelet); K8S_CHECK_CLUSTER=0
# skips it
if [ "${K8S_CHECK_CLUSTER:-1}" != 0 ]; then
  step "helm install/upgrade into a local kube-apiserver"
  "$root/scripts/k8s-cluster.sh" "$helm" || fail=1
fi

if [ "$fail" != 0 ]; then
  echo "k8s-check: FAILED"
  exit 1
fi
echo "k8s-check: ok"
