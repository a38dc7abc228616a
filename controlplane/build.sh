#!/bin/sh
# Builds the real control plane (kube-apiserver, kube-controller-manager, kube-scheduler, etcd) from the Go
# modules pinned in controlplane/go.mod and controlplane/etcd/go.mod, into $CONTROLPLANE_BIN.
# `make controlplane` calls it only when that directory's stamp is missing (versions and go.sum are in its key).
set -eu

here=$(cd "$(dirname "$0")" && pwd)
out=${1:?usage: build.sh OUTPUT_BIN_DIR}
mkdir -p "$(dirname "$out")"
out=$(cd "$(dirname "$out")" && pwd)/$(basename "$out")  # absolute: the builds below run in other directories
KUBE_VERSION=$(awk '$1 == "k8s.io/kubernetes" {print $2}' "$here/go.mod")
ETCD_VERSION=$(awk '$2 == "go.etcd.io/etcd/server/v3" {print $3}' "$here/etcd/go.mod")
GO_MIN=1.26

if ! command -v go >/dev/null 2>&1; then
	echo "controlplane: the Go toolchain (go $GO_MIN or newer) is needed to build Kubernetes $KUBE_VERSION and etcd $ETCD_VERSION; 'go' is not on PATH" >&2
	exit 2
fi
go_version=$(go env GOVERSION | sed 's/^go//')
if [ "$(printf '%s\n%s\n' "$GO_MIN" "$go_version" | sort -V | head -1)" != "$GO_MIN" ]; then
	echo "controlplane: Kubernetes $KUBE_VERSION needs go $GO_MIN or newer; 'go' on PATH is $go_version" >&2
	exit 2
fi

major=$(echo "$KUBE_VERSION" | sed 's/^v\([0-9]*\)\..*/\1/')
minor=$(echo "$KUBE_VERSION" | sed 's/^v[0-9]*\.\([0-9]*\)\..*/\1/')
build_date=$(date -u +%Y-%m-%dT%H:%M:%SZ)
# What upstream's hack/lib/version.sh stamps in, so /version and kubectl report v1.36.x, not v0.0.0-master.
# The module zip carries no commit id, hence gitCommit is empty and the tree state says "archive".
ldflags="-s -w"
for pkg in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
	ldflags="$ldflags -X $pkg.gitVersion=$KUBE_VERSION -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
	ldflags="$ldflags -X $pkg.gitCommit= -X $pkg.gitTreeState=archive -X $pkg.buildDate=$build_date"
done

tmp="$out.tmp.$$"
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp"
# Static binaries as upstream ships its server components; -p 2 keeps a 2-core machine usable meanwhile.
export CGO_ENABLED=0 GOFLAGS="${GOFLAGS:-} -mod=readonly"
parallel=${CONTROLPLANE_BUILD_P:-2}

echo "controlplane: building Kubernetes $KUBE_VERSION (kube-apiserver, kube-controller-manager, kube-scheduler) and etcd $ETCD_VERSION with $(go env GOVERSION) into $out"
start=$(date +%s)
(cd "$here" && go build -p "$parallel" -trimpath -ldflags "$ldflags" -o "$tmp/" \
	k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager k8s.io/kubernetes/cmd/kube-scheduler)
(cd "$here/etcd" && go build -p "$parallel" -trimpath -ldflags "-s -w" -o "$tmp/etcd" .)
for binary in kube-apiserver kube-controller-manager kube-scheduler etcd; do
	test -x "$tmp/$binary" || { echo "controlplane: $binary was not built" >&2; exit 1; }
done
rm -rf "$out"
mv "$tmp" "$out"
trap - EXIT
echo "controlplane: built in $(( $(date +%s) - start )) s"
