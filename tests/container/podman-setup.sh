#!/bin/bash
# podman-setup.sh: make rootful podman work on a Debian 12 CI machine without a
# registry: packages, a containers.conf, and debian:bookworm-slim imported from
# a debootstrap minbase tarball it caches outside the repository (MG_CI_CACHE).
# Must not change anything under /etc. Recipe: CONTAINERS.md beside the repo.
#
#   tests/container/podman-setup.sh CONFDIR
#     writes CONFDIR/containers.conf; use it with
#     export CONTAINERS_CONF=CONFDIR/containers.conf
#
# Env: MG_CI_CACHE (default /var/cache/moongate-ci) holds the base tarball;
#      MIRROR / SECURITY_MIRROR: the Debian mirrors (default: read from the
#      host's apt sources, else deb.debian.org).
set -euo pipefail

CONFDIR=${1:?usage: podman-setup.sh CONFDIR}
CACHE=${MG_CI_CACHE:-/var/cache/moongate-ci}
BASE_TAR="$CACHE/debian-bookworm-minbase.tar"
BASE_REF=docker.io/library/debian:bookworm-slim

say() { printf 'podman-setup: %s\n' "$*" >&2; }

if [ "$(id -u)" != 0 ]; then
  say "needs root (rootful podman, debootstrap); run as root"
  exit 2
fi

# ---- packages ------------------------------------------------------------------
missing=""
for p in podman runc debootstrap; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  say "installing:$missing"
  export DEBIAN_FRONTEND=noninteractive
  timeout 300 apt-get update -qq
  # shellcheck disable=SC2086
  timeout 600 apt-get install -y -qq $missing >/dev/null
fi

# ---- containers.conf -------------------------------------------------------------
# runc, not crun: crun 1.8 refuses the hybrid cgroup layout of these VMs.
# Lowered ulimits: without CAP_SYS_RESOURCE the default 1048576 cannot be set.
mkdir -p "$CONFDIR"
nofile=$(ulimit -Hn)
[ "$nofile" = unlimited ] && nofile=1048576
nproc=$(ulimit -Hu)
{ [ "$nproc" = unlimited ] || [ "$nproc" -gt 32768 ]; } && nproc=32768
cat > "$CONFDIR/containers.conf" <<EOC
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=$nproc:$nproc"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
EOC
export CONTAINERS_CONF="$CONFDIR/containers.conf"

# ---- base image ------------------------------------------------------------------
if podman image exists "$BASE_REF"; then
  say "base image $BASE_REF present"
  exit 0
fi

mirror_from_host() {
  # First deb.debian.org-style URI of the host's sources (deb822 or one-line).
  local f uri
  for f in /etc/apt/sources.list.d/debian.sources /etc/apt/sources.list; do
    [ -r "$f" ] || continue
    uri=$(grep -hE '^(URIs:|deb )' "$f" | grep -v security | head -1 | sed -E 's/^URIs:[[:space:]]*//; s/^deb[[:space:]]+(\[[^]]*\][[:space:]]+)?//; s/[[:space:]].*//')
    [ -n "$uri" ] && { echo "$uri"; return; }
  done
  echo http://deb.debian.org/debian
}
MIRROR=${MIRROR:-$(mirror_from_host)}
SECURITY_MIRROR=${SECURITY_MIRROR:-${MIRROR%/debian}/debian-security}

if [ ! -s "$BASE_TAR" ]; then
  say "debootstrap --variant=minbase bookworm from $MIRROR (once; cached in $BASE_TAR)"
  mkdir -p "$CACHE"
  work=$(mktemp -d "$CACHE/rootfs.XXXXXX")
  trap 'rm -rf "$work"' EXIT
  timeout 900 debootstrap --variant=minbase bookworm "$work/rootfs" "$MIRROR" >"$work/debootstrap.log" 2>&1 || {
    tail -20 "$work/debootstrap.log" >&2
    exit 1
  }
  r="$work/rootfs"
  rm -rf "$r"/var/cache/apt/archives/*.deb "$r"/var/lib/apt/lists/* "$r/etc/apt/sources.list"
  printf '%s\n' 'Types: deb' "URIs: $MIRROR" 'Suites: bookworm bookworm-updates' 'Components: main' \
    'Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg' '' 'Types: deb' \
    "URIs: $SECURITY_MIRROR" 'Suites: bookworm-security' 'Components: main' \
    'Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg' > "$r/etc/apt/sources.list.d/debian.sources"
  : > "$r/etc/resolv.conf"
  tar -C "$r" -cf "$BASE_TAR.tmp" .
  mv "$BASE_TAR.tmp" "$BASE_TAR"
  rm -rf "$work"
  trap - EXIT
fi
say "importing $BASE_TAR as $BASE_REF"
podman import -q --change 'CMD ["bash"]' "$BASE_TAR" localhost/debian:bookworm >/dev/null
podman tag localhost/debian:bookworm "$BASE_REF" docker.io/library/debian:bookworm
