#!/usr/bin/env bash
# Build the Kubernetes control-plane binaries Clarion's tests and local run need, from Go modules.
#
#   kube-apiserver, kube-controller-manager, kubectl,
#   kube-scheduler, kubelet, kube-proxy               <- k8s.io/kubernetes@$K8S_VERSION
#   etcd                                              <- go.etcd.io/etcd/server/v3@$ETCD_VERSION
#   helm                                              <- helm.sh/helm/v3@$HELM_VERSION
#   coredns (cluster DNS of the real node)            <- github.com/coredns/coredns@$COREDNS_VERSION
#
# No registry reachable here publishes these binaries, so they are compiled with CGO_ENABLED=0 and
# cached outside the repository in $CLARION_K8S_CACHE/<version>/bin (default ~/.cache/clarion/k8s).
# A second run finds them and returns at once. The wrapper modules' go.mod files are generated:
# the k8s.io/* staging modules, which k8s.io/kubernetes requires at v0.0.0, are replaced by the
# published v0.X.Y read from that module's own go.mod.
set -euo pipefail

K8S_VERSION="${K8S_VERSION:-v1.35.4}"
ETCD_VERSION="${ETCD_VERSION:-v3.6.16}"
HELM_VERSION="${HELM_VERSION:-v3.22.0}"
COREDNS_VERSION="${COREDNS_VERSION:-v1.14.7}"
CACHE_ROOT="${CLARION_K8S_CACHE:-$HOME/.cache/clarion/k8s}"
KEY="k8s-${K8S_VERSION}_etcd-${ETCD_VERSION}_helm-${HELM_VERSION}_coredns-${COREDNS_VERSION}"
OUT="$CACHE_ROOT/$KEY"
BIN="$OUT/bin"

K8S_BINARIES=(kube-apiserver kube-controller-manager kubectl kube-scheduler kubelet kube-proxy)
want=("${K8S_BINARIES[@]}" etcd helm coredns)
k8s_minor=${K8S_VERSION#v*.}; k8s_minor=${k8s_minor%%.*}
# helm assumes Kubernetes 1.20 when no cluster is asked (`helm template`); tell it ours.
HELM_KUBE="-X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$k8s_minor"
compute_missing() {
  missing=()
  for b in "${want[@]}"; do [[ -x "$BIN/$b" ]] || missing+=("$b"); done
  if [[ -x "$BIN/helm" && "$(cat "$OUT/helm.ldflags" 2>/dev/null)" != "$HELM_KUBE" ]]; then missing+=(helm); fi
}
compute_missing
if [[ ${#missing[@]} -eq 0 ]]; then
  echo "$BIN"
  exit 0
fi

command -v go >/dev/null || { echo "build-k8s: Go is required to build the control plane (missing: ${missing[*]})" >&2; exit 1; }

log() { echo "build-k8s: $*" >&2; }
mkdir -p "$BIN" "$OUT/src"
# One build at a time per cache directory: a second caller waits, then finds the binaries.
exec 9>"$OUT/.build.lock"
if ! flock -n 9; then
  log "another build of $KEY is running; waiting for it"
  flock 9
fi
compute_missing
if [[ ${#missing[@]} -eq 0 ]]; then
  echo "$BIN"
  exit 0
fi
start=$(date +%s)
export CGO_ENABLED=0 GOFLAGS="-buildvcs=false -mod=mod" GOTOOLCHAIN=local
build_date=$(date -u +%Y-%m-%dT%H:%M:%SZ)

need() { [[ " ${missing[*]} " == *" $1 "* ]]; }

k8s_missing=()
for b in "${K8S_BINARIES[@]}"; do need "$b" && k8s_missing+=("$b"); done
if [[ ${#k8s_missing[@]} -gt 0 ]]; then
  log "building ${k8s_missing[*]} $K8S_VERSION (cold build of all six: 20-40 min on 2 cores)"
  meta=$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION")
  gomod=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])' <<<"$meta")
  staging_version="v0.${K8S_VERSION#v1.}"
  w="$OUT/src/kubernetes"
  mkdir -p "$w"
  {
    echo "module clarion.dev/k8sbuild"
    echo
    echo "go 1.25.0"
    echo
    echo "godebug default=go1.25"
    echo
    echo "require k8s.io/kubernetes $K8S_VERSION"
    echo
    echo "tool ("
    for b in "${K8S_BINARIES[@]}"; do echo "	k8s.io/kubernetes/cmd/$b"; done
    echo ")"
    echo
    echo "replace ("
    # every `k8s.io/x => ./staging/src/k8s.io/x` line of the upstream go.mod becomes a published version
    sed -n 's#^[[:space:]]*\(k8s\.io/[a-z0-9-]*\) => \./staging/src/.*#\1#p' "$gomod" |
      while read -r m; do echo "	$m => $m $staging_version"; done
    echo ")"
  } >"$w/go.mod"
  (cd "$w" && go mod tidy >&2)
  major=${K8S_VERSION#v}; major=${major%%.*}
  minor=${K8S_VERSION#v*.}; minor=${minor%%.*}
  ld=""
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld+=" -X '$pkg.gitVersion=$K8S_VERSION' -X '$pkg.gitMajor=$major' -X '$pkg.gitMinor=$minor'"
    ld+=" -X '$pkg.gitTreeState=clean' -X '$pkg.buildDate=$build_date' -X '$pkg.gitCommit=module-$K8S_VERSION'"
  done
  pkgs=(); for b in "${k8s_missing[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$b"); done
  (cd "$w" && go build -v -trimpath -ldflags "-s -w $ld" -o "$BIN/" "${pkgs[@]}" 2>&1 |
      awk '{n++; if (n % 200 == 0) { printf "build-k8s: ... %d packages compiled\n", n > "/dev/stderr" } }')
  for b in "${k8s_missing[@]}"; do
    [[ -x "$BIN/$b" ]] || { log "$b was not built"; exit 1; }
  done
fi

# A Go command from a wrapper module that takes it as a tool: name, module@version, package, -X flags.
build_tool() {
  local name=$1 module=$2 package=$3 ldflags=$4 w="$OUT/src/$1"
  log "building $name ${module#*@}"
  mkdir -p "$w"
  printf 'module clarion.dev/%sbuild\n\ngo 1.25.0\n' "$name" >"$w/go.mod"
  (cd "$w" && go get -tool "$module" >&2 && go mod tidy >&2)
  (cd "$w" && go build -trimpath -ldflags "-s -w $ldflags" -o "$BIN/$name" "$package")
}

if need etcd; then
  build_tool etcd "go.etcd.io/etcd/server/v3@$ETCD_VERSION" go.etcd.io/etcd/server/v3 \
    "-X go.etcd.io/etcd/api/v3/version.GitSHA=module-$ETCD_VERSION"
fi
if need helm; then
  build_tool helm "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" helm.sh/helm/v3/cmd/helm \
    "-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION $HELM_KUBE"
  echo "$HELM_KUBE" >"$OUT/helm.ldflags"
fi
if need coredns; then
  build_tool coredns "github.com/coredns/coredns@$COREDNS_VERSION" github.com/coredns/coredns \
    "-X github.com/coredns/coredns/coremain.GitCommit=module-$COREDNS_VERSION"
fi

log "built ${missing[*]} in $(( $(date +%s) - start ))s; cache $(du -sh "$BIN" | cut -f1) at $BIN"
echo "$BIN"
