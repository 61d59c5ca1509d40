#!/usr/bin/env bash
# Build Clarion's images without Docker, and cache each by content hash.
#
#   base        Debian $SUITE + Python 3.11 from Debian packages, made by mmdebstrap (no registry
#               needed), cached as $CACHE/base-<key>.tar and imported into buildah as
#               localhost/clarion-base:<key>. <key> hashes the suite, the package list, the apt
#               sources, the mmdebstrap options and mmdebstrap's version.
#   clarion     `buildah bud` of ./Dockerfile with PYTHON_IMAGE=the base: the one Clarion image.
#               Its hash covers exactly what the build reads: Dockerfile, .dockerignore,
#               pyproject.toml, README.md, the files under core/ operator/ services/ devtools/ that
#               .dockerignore lets into the context, and the base key.
#   postgresql  images/postgresql (Debian's PostgreSQL 15 on the base) and
#   redis       images/redis (Debian's Redis 7): the chart's bundled datastores on the local node,
#               where Docker Hub's images cannot be pulled. Hash: their directory and the base key.
#   pause       the pod sandbox image of the local node: pause.c from the k8s.io/kubernetes module
#               (the source of registry.k8s.io/pause), compiled static with the host's gcc.
#
# Each image is tagged localhost/<name>:<hash> and saved as the OCI archive $CACHE/<name>-<hash>.oci.tar
# (`ctr -n k8s.io images import` reads it and names the image from its index). $CACHE is
# $CLARION_IMAGE_CACHE (default ~/.cache/clarion/images). An image whose archive exists is not built
# again. Arguments name the images to build (default: all); stdout has one line per image:
# `<name> <image-ref> <archive-path>`.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${CLARION_IMAGE_CACHE:-$HOME/.cache/clarion/images}"
SUITE=bookworm
# The mirror /etc/apt/sources.list.d/debian.sources uses, with the suite's updates and security fixes.
SOURCES=(
  "deb http://deb.debian.org/debian $SUITE main"
  "deb http://deb.debian.org/debian $SUITE-updates main"
  "deb http://deb.debian.org/debian-security $SUITE-security main"
)
# What the Dockerfile needs from its base: `python` (python-is-python3), `python -m venv` with
# ensurepip (python3-venv brings the pip and setuptools wheels, so the system pip, python3-pip, is
# not needed), groupadd/useradd (passwd), CA certificates for pip and the services, and tzdata.
BASE_PACKAGES=(python3 python3-venv python-is-python3 passwd ca-certificates tzdata)
MMDEBSTRAP_OPTS=(
  --mode=root --variant=minbase --format=tar
  "--include=$(IFS=,; echo "${BASE_PACKAGES[*]}")"
  '--aptopt=APT::Install-Recommends "false"'
  # merged /usr through usr-is-merged: without it apt satisfies init-system-helpers with usrmerge,
  # which brings all of perl (50 MB)
  --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr
  # dpkg keeps these exclusions in the image (/etc/dpkg/dpkg.cfg.d), so later installs honour them too
  '--dpkgopt=path-exclude=/usr/share/doc/*'
  '--dpkgopt=path-include=/usr/share/doc/*/copyright'
  '--dpkgopt=path-exclude=/usr/share/man/*'
  '--dpkgopt=path-exclude=/usr/share/info/*'
  '--dpkgopt=path-exclude=/usr/share/locale/*'
  '--dpkgopt=path-include=/usr/share/locale/locale.alias'
  # the build host's resolver and name do not belong in the image; the runtime provides both
  '--customize-hook=rm -f "$1/etc/resolv.conf" "$1/etc/hostname"'
)
# buildah's storage driver: overlay, which works natively on this ext4 root ("Native Overlay Diff:
# true" in `buildah info`); STORAGE_DRIVER=vfs is the fallback for filesystems where it does not.
export STORAGE_DRIVER="${STORAGE_DRIVER:-overlay}"
# chroot isolation and the host network: RUN steps need neither runc's namespaces nor CNI here.
ISOLATION=(--isolation chroot)
# RUN steps reach PyPI through the host's network, so they trust the CAs the host trusts: this bundle
# is bind-mounted read-only over the base's /etc/ssl/certs/ca-certificates.crt (which Debian's pip
# reads) while RUN steps execute; it is not part of any layer. Empty: the base's own bundle.
CA_BUNDLE="${CLARION_BUILD_CA_BUNDLE-/etc/ssl/certs/ca-certificates.crt}"

log() { echo "build-image: $*" >&2; }
die() { log "$*"; exit 1; }

K8S_VERSION="${K8S_VERSION:-v1.35.4}"
ALL_IMAGES=(clarion postgresql redis pause)
WANT=("$@")
[[ ${#WANT[@]} -gt 0 ]] || WANT=("${ALL_IMAGES[@]}")
for name in "${WANT[@]}"; do
  [[ " ${ALL_IMAGES[*]} " == *" $name "* ]] || { echo "build-image: unknown image $name (one of ${ALL_IMAGES[*]})" >&2; exit 2; }
done

for tool in mmdebstrap buildah sha256sum flock; do
  command -v "$tool" >/dev/null || die "$tool is required (apt-get install mmdebstrap buildah)"
done
[[ "$CACHE" != *:* ]] || die "CLARION_IMAGE_CACHE must not contain ':' (buildah's oci-archive: syntax): $CACHE"

mmdebstrap_version=$(mmdebstrap --version | awk '{print $2}')
BASE_KEY="$SUITE-$(printf '%s\n' "mmdebstrap $mmdebstrap_version" "${SOURCES[@]}" "${MMDEBSTRAP_OPTS[@]}" |
  sha256sum | cut -c1-12)"
BASE_REF="localhost/clarion-base:$BASE_KEY"
BASE_TAR="$CACHE/base-$BASE_KEY.tar"

# The build context as .dockerignore defines it: these paths, minus caches and bytecode. Kept in
# step with .dockerignore by hand; a file here that the context lacks (or the reverse) only costs a
# needless rebuild (or a missed one), so both lists name the same exclusions.
context_files() {
  (cd "$ROOT" && find Dockerfile .dockerignore pyproject.toml README.md core operator services devtools \
    \( -name __pycache__ -o -name .pytest_cache -o -name .mypy_cache -o -name .ruff_cache \
       -o -name '*.egg-info' \) -prune -o -type f ! -name '*.pyc' -print0 | LC_ALL=C sort -z)
}
clarion_hash() {
  { echo "base $BASE_KEY"; context_files | (cd "$ROOT" && xargs -0 sha256sum); } | sha256sum | cut -c1-16
}
dir_hash() {  # a directory of the repository (images/<name>) and the base key
  { echo "base $BASE_KEY"; (cd "$ROOT" && find "$1" -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum); } |
    sha256sum | cut -c1-16
}
pause_source() {
  local dir
  dir=$(cd /tmp && GOFLAGS=-mod=mod go mod download -json "k8s.io/kubernetes@$K8S_VERSION" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
  echo "$dir/build/pause/linux/pause.c"
}
pause_hash() {
  { sha256sum <"$(pause_source)"; gcc --version | head -1; } | sha256sum | cut -c1-16
}
image_hash() {
  case "$1" in
    clarion) clarion_hash ;;
    postgresql | redis) dir_hash "images/$1" ;;
    pause) pause_hash ;;
  esac
}

declare -A REF ARCHIVE
todo=()
for name in "${WANT[@]}"; do
  hash=$(image_hash "$name")
  REF[$name]="localhost/clarion-$name:$hash"
  [[ $name == clarion ]] && REF[$name]="localhost/clarion:$hash"
  ARCHIVE[$name]="$CACHE/$name-$hash.oci.tar"
  [[ -s "${ARCHIVE[$name]}" ]] || todo+=("$name")
done
report() { for name in "${WANT[@]}"; do echo "$name ${REF[$name]} ${ARCHIVE[$name]}"; done; }
if [[ ${#todo[@]} -eq 0 ]]; then
  report
  exit 0
fi

mkdir -p "$CACHE"
# One build at a time per cache directory: a second caller waits, then finds the archives.
exec 9>"$CACHE/.build.lock"
if ! flock -n 9; then
  log "another build is running; waiting for it"
  flock 9
fi

ca_mount=()
if [[ -n "$CA_BUNDLE" ]]; then
  [[ -r "$CA_BUNDLE" ]] || die "CA bundle $CA_BUNDLE is not readable (CLARION_BUILD_CA_BUNDLE= uses the base's)"
  ca_mount=(--volume "$CA_BUNDLE:/etc/ssl/certs/ca-certificates.crt:ro")
fi

tmp_files=()
cleanup() { rm -f "${tmp_files[@]}"; }
trap cleanup EXIT

ensure_base() {
  if buildah inspect --type image "$BASE_REF" >/dev/null 2>&1; then
    return
  fi
  if [[ ! -s "$BASE_TAR" ]]; then
    log "building base $BASE_KEY with mmdebstrap $mmdebstrap_version: ${BASE_PACKAGES[*]}"
    local start tmp
    start=$(date +%s)
    tmp="$CACHE/.base-$BASE_KEY.$$.tar"
    tmp_files+=("$tmp")
    mmdebstrap "${MMDEBSTRAP_OPTS[@]}" "$SUITE" "$tmp" "${SOURCES[@]}" >&2 ||
      die "mmdebstrap failed for $BASE_KEY"
    mv "$tmp" "$BASE_TAR"
    log "base tarball $(du -h "$BASE_TAR" | cut -f1) in $(( $(date +%s) - start ))s: $BASE_TAR"
  fi
  log "importing $BASE_TAR as $BASE_REF"
  local ctr
  ctr=$(buildah from scratch)
  if ! { buildah add --quiet "$ctr" "$BASE_TAR" / >/dev/null &&
         buildah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
           --env LANG=C.UTF-8 --cmd python3 \
           --label "org.opencontainers.image.description=Debian $SUITE, ${BASE_PACKAGES[*]} (mmdebstrap)" \
           "$ctr" &&
         buildah commit --quiet --rm "$ctr" "$BASE_REF" >/dev/null; }; then
    buildah rm "$ctr" >/dev/null 2>&1 || true
    die "could not import $BASE_TAR into buildah as $BASE_REF"
  fi
}

bud() {  # name, Dockerfile, context, build-arg
  log "building ${REF[$1]} from $2 (storage driver $STORAGE_DRIVER)"
  buildah bud "${ISOLATION[@]}" --network host --layers --force-rm --pull=never "${ca_mount[@]}" \
    --build-arg "$4" -f "$2" -t "${REF[$1]}" "$3" >&2 || die "buildah bud failed for ${REF[$1]}"
}

build_pause() {
  local work ctr
  work=$(mktemp -d)
  gcc -Os -static -DVERSION="$K8S_VERSION-clarion" -o "$work/pause" "$(pause_source)" ||
    die "gcc could not build pause (needs libc6-dev for a static libc)"
  ctr=$(buildah from scratch)
  if ! { buildah copy --quiet "$ctr" "$work/pause" /pause >/dev/null &&
         buildah config --entrypoint '["/pause"]' --user 65535:65535 "$ctr" &&
         buildah commit --quiet --rm "$ctr" "${REF[pause]}" >/dev/null; }; then
    buildah rm "$ctr" >/dev/null 2>&1 || true
    die "could not make ${REF[pause]}"
  fi
  rm -rf "$work"
}

for name in "${todo[@]}"; do
  [[ -s "${ARCHIVE[$name]}" ]] && continue  # built by the caller we waited for
  start=$(date +%s)
  case "$name" in
    clarion) ensure_base; bud clarion "$ROOT/Dockerfile" "$ROOT" "PYTHON_IMAGE=$BASE_REF" ;;
    postgresql | redis) ensure_base; bud "$name" "$ROOT/images/$name/Dockerfile" "$ROOT/images/$name" "BASE_IMAGE=$BASE_REF" ;;
    pause) build_pause ;;
  esac
  tmp="$CACHE/.$name.$$.oci.tar"
  tmp_files+=("$tmp")
  buildah push --quiet "${REF[$name]}" "oci-archive:$tmp:${REF[$name]}" >&2 || die "could not export ${REF[$name]}"
  mv "$tmp" "${ARCHIVE[$name]}"
  log "built ${REF[$name]} in $(( $(date +%s) - start ))s: $(du -h "${ARCHIVE[$name]}" | cut -f1) at ${ARCHIVE[$name]}"
done
report
