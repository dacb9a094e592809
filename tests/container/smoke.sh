#!/bin/bash
# smoke.sh: build the moongate image with rootful podman, then run smoke.py on
# it. Owns its temp dir and the image tag it builds (smoke.py: its containers);
# must not touch other images or containers.
#
#   tests/container/smoke.sh [--context DIR] [--prune]
#     --context DIR  build context (default: this repository)
#     --prune        remove the image and dangling layers afterwards (~600 MB);
#                    by default localhost/moongate:smoke is kept so the next
#                    run reuses its cached build layers
#
# Slow only once: debootstrap of the base image (~30 s) is cached as a tarball
# in $MG_CI_CACHE (default /var/cache/moongate-ci); the build reuses podman's
# layer cache. Every step has a timeout. Needs root. Prints per-phase times.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
CTX=$REPO
PRUNE=0
while [ $# -gt 0 ]; do
  case $1 in
    --context) CTX=$(cd "${2:?--context DIR}" && pwd); shift 2 ;;
    --prune) PRUNE=1; shift ;;
    *) echo "usage: $0 [--context DIR] [--prune]" >&2; exit 2 ;;
  esac
done
IMAGE=${MG_IMAGE:-localhost/moongate:smoke}
WORK=$(mktemp -d /tmp/moongate-container.XXXXXX)
cleanup() {
  if [ "$PRUNE" = 1 ]; then
    podman rmi -f "$IMAGE" >/dev/null 2>&1 || true
    podman image prune -f >/dev/null 2>&1 || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%6.1f", b - a }'; }
t_all=$(now)
phase() { # phase NAME COMMAND...: run it, print its wall time
  local name=$1 t0 rc
  shift
  t0=$(now)
  set +e
  "$@"
  rc=$?
  set -e
  printf 'smoke: %-8s %ss  (rc=%d)\n' "$name" "$(since "$t0")" "$rc" >&2
  return $rc
}

phase setup "$HERE/podman-setup.sh" "$WORK"
export CONTAINERS_CONF="$WORK/containers.conf"

# --network host for the build's apt-get: no bridge, no iptables chains left
# behind on the machine. --pull=never: the base image is local (podman-setup).
build_image() {
  timeout 1800 podman build --pull=never --format docker --network host \
    -f "$CTX/Dockerfile" -t "$IMAGE" "$CTX" > "$WORK/build.log" 2>&1 || {
    tail -40 "$WORK/build.log" >&2
    return 1
  }
}
phase build build_image
size=$(podman image inspect -f '{{.Size}}' "$IMAGE")
echo "smoke: image $IMAGE: $((size / 1000000)) MB ($size bytes), user $(podman image inspect -f '{{.Config.User}}' "$IMAGE")" >&2

rc=0
phase smoke timeout 300 python3 "$HERE/smoke.py" "$IMAGE" || rc=$?
printf 'smoke: total    %ss\n' "$(since "$t_all")" >&2
exit $rc
