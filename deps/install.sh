#!/bin/sh
# Install the Debian packages moongate needs, if any are missing.
#   deps/install.sh build   -> what building needs (deps/apt-packages.txt)
#   deps/install.sh test    -> plus what the test suite needs (deps/apt-packages-test.txt)
# As root it runs apt-get; otherwise it prints the exact command and fails.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
lists="$here/apt-packages.txt"
[ "${1:-build}" = test ] && lists="$lists $here/apt-packages-test.txt"
wanted=$(cat $lists | sed 's/#.*//' | tr -s ' \t' '\n' | sed '/^$/d' | sort -u)
missing=""
for p in $wanted; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing="$missing $p"
  fi
done
[ -z "$missing" ] && exit 0
cmd="apt-get install -y --no-install-recommends$missing"
if [ "$(id -u)" != 0 ]; then
  echo "moongate needs these Debian packages:$missing" >&2
  echo "run as root:  apt-get update && $cmd" >&2
  exit 1
fi
echo "installing:$missing" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# Packages with services (prometheus, node exporter, victoria-metrics) must
# not start them: the tests start their own on loopback ports.
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  trap 'rm -f /usr/sbin/policy-rc.d' EXIT
fi
apt-get install -y -qq --no-install-recommends $missing >/dev/null
