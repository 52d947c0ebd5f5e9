#!/usr/bin/env bash
# helm install and upgrade of k8s/commerce into a real Kubernetes API server
# (API only: etcd + kube-apiserver on 127.0.0.1, no kubelet, so no pod
# runs): the API server validates and admits every object as a cluster
# would. install with the default values, upgrade to the production ones,
# the hook Jobs created with dryRun=All (their completion cannot be waited
# for without a kubelet), then uninstall.
#
#   scripts/k8s-cluster.sh HELM
#
# kube-apiserver is built once into $HOME/.cache/commerce (~4 min cold)
# from a wrapper module requiring k8s.io/kubernetes and its staging modules;
# etcd is Debian's etcd-server (installed when missing).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
helm=$1
chart=$root/k8s/commerce
K8S_VERSION=v1.36.3
cache=${COMMERCE_CACHE:-$HOME/.cache/commerce}
apiserver=$cache/kube-apiserver-$K8S_VERSION/kube-apiserver

if ! command -v etcd >/dev/null; then
  echo "k8s-cluster: installing etcd-server"
  SUDO=""
  [ "$(id -u)" = 0 ] || SUDO=sudo
  log=$(mktemp)
  { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends etcd-server; } >"$log" 2>&1 || {
    tail -20 "$log"
    exit 1
  }
  rm -f "$log"
  # the package starts a system etcd; this script runs its own
  $SUDO systemctl disable --now etcd >/dev/null 2>&1 || true
fi

if [ ! -x "$apiserver" ]; then
  echo "k8s-cluster: building kube-apiserver $K8S_VERSION (once, ~4 min)" >&2
  dir=$cache/kube-apiserver-$K8S_VERSION
  rm -rf "$dir.tmp"
  mkdir -p "$dir.tmp/src"
  gomod=$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["GoMod"])')
  staging=v0${K8S_VERSION#v1}
  {
    echo "module commerce.local/kube-apiserver"
    echo
    echo "go 1.25"
    echo
    echo "require k8s.io/kubernetes $K8S_VERSION"
    echo
    # kubernetes's go.mod replaces each staging module with a directory of
    # its own tree; here each is the released module of the same version
    sed -n 's#^[[:space:]]*\(k8s.io/[a-z0-9-]*\) => ./staging/.*#replace \1 => \1 '"$staging"'#p' "$gomod"
  } >"$dir.tmp/src/go.mod"
  cat >"$dir.tmp/src/main.go" <<'GO'
package main

import (
	"os"

	"k8s.io/component-base/cli"
	"k8s.io/kubernetes/cmd/kube-apiserver/app"
)

func main() {
	os.Exit(cli.Run(app.NewAPIServerCommand()))
}
GO
  (cd "$dir.tmp/src" && go mod tidy >/dev/null 2>&1 || go mod tidy &&
    go build -o "$dir.tmp/kube-apiserver" \
      -ldflags "-X k8s.io/component-base/version.gitVersion=$K8S_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=36" .)
  mkdir -p "$dir"
  mv "$dir.tmp/kube-apiserver" "$apiserver"
  rm -rf "$dir.tmp"
fi

# shellcheck source=scripts/lib/ports.sh
. "$root/scripts/lib/ports.sh"
work=$(mktemp -d)
pids=()
# the API server first (without etcd it hangs in its shutdown), each given
# 10 s before SIGKILL
cleanup() {
  local i p
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    p=${pids[$i]}
    kill "$p" 2>/dev/null || continue
    for _ in $(seq 1 50); do
      kill -0 "$p" 2>/dev/null || break
      sleep 0.2
    done
    kill -9 "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
  rm -rf "$work"
}
trap cleanup EXIT

etcd_port=$(ports_pick "$work")
etcd_peer=$(ports_pick "$work")
api_port=$(ports_pick "$work")
etcd --name check --data-dir "$work/etcd" \
  --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
  --listen-peer-urls "http://127.0.0.1:$etcd_peer" --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer" \
  --initial-cluster "check=http://127.0.0.1:$etcd_peer" >"$work/etcd.log" 2>&1 &
pids+=($!)

openssl genrsa -out "$work/sa.key" 2048 2>/dev/null
openssl rsa -in "$work/sa.key" -pubout -out "$work/sa.pub" 2>/dev/null
token=$(openssl rand -hex 16)
echo "$token,admin,admin,system:masters" >"$work/tokens.csv"
"$apiserver" --etcd-servers "http://127.0.0.1:$etcd_port" \
  --bind-address 127.0.0.1 --secure-port "$api_port" --cert-dir "$work/certs" \
  --token-auth-file "$work/tokens.csv" --authorization-mode AlwaysAllow \
  --service-account-issuer https://kubernetes.default.svc \
  --service-account-key-file "$work/sa.pub" --service-account-signing-key-file "$work/sa.key" \
  --service-cluster-ip-range 10.96.0.0/16 --enable-priority-and-fairness=false \
  >"$work/apiserver.log" 2>&1 &
pids+=($!)

api=https://127.0.0.1:$api_port
kapi() { curl -sk -H "Authorization: Bearer $token" "$@"; }
for i in $(seq 1 120); do
  [ "$(kapi -o /dev/null -w '%{http_code}' "$api/readyz")" = 200 ] && break
  if [ "$i" = 120 ]; then
    tail -20 "$work/apiserver.log"
    echo "k8s-cluster: kube-apiserver not ready in 60 s" >&2
    exit 1
  fi
  sleep 0.5
done
echo "k8s-cluster: kube-apiserver $K8S_VERSION on 127.0.0.1:$api_port, etcd on 127.0.0.1:$etcd_port"

cat >"$work/kubeconfig" <<KC
apiVersion: v1
kind: Config
clusters:
  - name: check
    cluster: {server: "$api", insecure-skip-tls-verify: true}
users:
  - name: admin
    user: {token: "$token"}
contexts:
  - name: check
    context: {cluster: check, user: admin}
current-context: check
KC
export KUBECONFIG=$work/kubeconfig HELM_CACHE_HOME=$work/helm/cache HELM_CONFIG_HOME=$work/helm/config HELM_DATA_HOME=$work/helm/data

# post YAML; exit 1 with the API's answer unless it is one of the codes $1
post() {
  local want=$1 path=$2 file=$3 code
  code=$(kapi -o "$work/answer" -w '%{http_code}' -X POST -H 'Content-Type: application/yaml' \
    --data-binary @"$file" "$api$path")
  case " $want " in *" $code "*) return 0 ;; esac
  echo "k8s-cluster: POST $path: HTTP $code" >&2
  cat "$work/answer" >&2
  echo >&2
  return 1
}
ns=commerce-check
printf 'apiVersion: v1\nkind: Namespace\nmetadata:\n  name: %s\n' "$ns" >"$work/ns.yaml"
post 201 /api/v1/namespaces "$work/ns.yaml"
# no controller-manager makes the default ServiceAccount, which pods need
printf 'apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: default\n' >"$work/sa.yaml"
post 201 "/api/v1/namespaces/$ns/serviceaccounts" "$work/sa.yaml"
# the Prometheus operator's kinds, as minimal CRDs (no schema: the API
# server accepts them, their fields are not checked here)
for kind in ServiceMonitor:servicemonitors PrometheusRule:prometheusrules; do
  cat >"$work/crd.yaml" <<CRD
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: ${kind#*:}.monitoring.coreos.com
spec:
  group: monitoring.coreos.com
  scope: Namespaced
  names: {kind: ${kind%%:*}, plural: ${kind#*:}, singular: $(echo "${kind%%:*}" | tr 'A-Z' 'a-z'), listKind: ${kind%%:*}List}
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}
CRD
  post 201 /apis/apiextensions.k8s.io/v1/customresourcedefinitions "$work/crd.yaml"
done
sleep 2 # the new kinds are served a moment after

fail=0
# hooks need pods to finish: installed without them, then created dry-run
echo "k8s-cluster: helm install (default values)"
"$helm" install commerce "$chart" -n "$ns" --no-hooks --timeout 60s >"$work/install.out" 2>&1 || {
  cat "$work/install.out"
  fail=1
}
echo "k8s-cluster: helm upgrade (production values)"
"$helm" upgrade commerce "$chart" -n "$ns" --no-hooks --timeout 60s -f "$chart/values-production.yaml" >"$work/upgrade.out" 2>&1 || {
  cat "$work/upgrade.out"
  fail=1
}
# one of each per service the production values enable
nsvc=$("$helm" template commerce "$chart" -n "$ns" -f "$chart/values-production.yaml" \
  --kube-version "${K8S_VERSION#v}" --show-only templates/deployment.yaml | grep -c '^kind: Deployment$')
echo "k8s-cluster:   $nsvc services enabled"
for kind in deployments:apps/v1 horizontalpodautoscalers:autoscaling/v2 poddisruptionbudgets:policy/v1 networkpolicies:networking.k8s.io/v1 servicemonitors:monitoring.coreos.com/v1; do
  n=$(kapi "$api/apis/${kind#*:}/namespaces/$ns/${kind%%:*}" | python3 -c 'import json, sys; print(len(json.load(sys.stdin)["items"]))')
  echo "k8s-cluster:   ${kind%%:*}: $n"
  [ "$n" = "$nsvc" ] && [ "$nsvc" -gt 0 ] || fail=1
done
# configmaps: one per service and the dashboards'
for kind in configmaps:$((nsvc + 1)) services:$nsvc; do
  n=$(kapi "$api/api/v1/namespaces/$ns/${kind%%:*}?labelSelector=app.kubernetes.io/part-of%3Dcommerce" | python3 -c 'import json, sys; print(len(json.load(sys.stdin)["items"]))')
  echo "k8s-cluster:   ${kind%%:*}: $n"
  [ "$n" = "${kind#*:}" ] || fail=1
done
# the hooks: the migrate Jobs and the test Pod, admitted with dryRun=All
"$helm" template commerce "$chart" -n "$ns" -f "$chart/values-production.yaml" \
  --kube-version "${K8S_VERSION#v}" --show-only templates/migrate-job.yaml \
  --show-only templates/tests/test-health.yaml >"$work/hooks.yaml"
awk -v dir="$work" '/^---/ { n++; next } { print > (dir "/hook-" n ".yaml") }' "$work/hooks.yaml"
for f in "$work"/hook-*.yaml; do
  grep -q '^kind:' "$f" || continue
  case $(sed -n 's/^kind: //p' "$f") in
    Job) path=/apis/batch/v1/namespaces/$ns/jobs ;;
    Pod) path=/api/v1/namespaces/$ns/pods ;;
    *) continue ;;
  esac
  name=$(sed -n '/^metadata:/,/^[a-z]/s/^  name: //p' "$f" | head -1)
  if post "200 201" "$path?dryRun=All" "$f"; then
    echo "k8s-cluster:   hook $name admitted (dry run)"
  else
    fail=1
  fi
done
"$helm" uninstall commerce -n "$ns" --no-hooks >/dev/null || fail=1
[ "$fail" = 0 ] || { echo "k8s-cluster: FAILED"; exit 1; }
echo "k8s-cluster: ok"
