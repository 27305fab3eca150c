#!/usr/bin/env bash
# Run the README's `make test` (or another goal, e.g. demo) inside a minimal Debian root of another
# release, from this machine, as root:
#   scripts/test_other_debian.sh forky|sid|trixie|bookworm [test|demo]    (`make test-debian RELEASE=… [GOAL=demo]`)
# The root is built once with debootstrap from Debian's archive and cached under build/debian/<release>
# (QGIS and the other Debian packages stay installed there; pip's download cache is kept beside it).
# Each run copies the working tree (tracked and untracked, not ignored: no .venv/.qgis) into a fresh
# folder, carries this machine's CA bundle and pip configuration in so pip reaches the same package
# index, and exits with the status of `make <goal>` there.
set -euo pipefail

release="${1:-}"
goal="${2:-test}"
case "$release" in
  trixie | bookworm) rolling=false ;;
  forky | sid) rolling=true ;;   # Debian 14 (testing) or unstable: QGIS 3.44
  *) echo "usage: $0 forky|sid|trixie|bookworm [test|demo]  (Debian 14 testing, unstable, 13 or 12)" >&2; exit 2 ;;
esac
[ "$(id -u)" = 0 ] || { echo "$0 needs root (debootstrap, mount, chroot)." >&2; exit 2; }

project="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="$project/build/debian"
target="$cache/$release"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
inside="/work/aid-xai"   # ../shared beside it is where the tests look for the real AID images

# Mounts live in a private mount namespace: they vanish with it, whatever way this script ends.
if [ -z "${AID_XAI_IN_NAMESPACE:-}" ]; then
  AID_XAI_IN_NAMESPACE=1 exec unshare --mount --propagation private "$0" "$@"
fi

if [ ! -e "$target/.complete" ]; then
  command -v debootstrap >/dev/null || { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y debootstrap; }
  echo "Building a minimal Debian $release root in $target (once; cached)"
  rm -rf "$target"
  mkdir -p "$cache"
  # An older debootstrap has no script for a release newer than itself; unstable's fits every new one.
  script=/usr/share/debootstrap/scripts/$release
  [ -e "$script" ] || script=/usr/share/debootstrap/scripts/sid
  debootstrap --variant=minbase --include=make,ca-certificates "$release" "$target" "$mirror" "$script"
  if $rolling; then   # testing and unstable have no -updates suite; their fixes come through the suite itself
    echo "deb $mirror $release main" >"$target/etc/apt/sources.list"
  else
    cat >"$target/etc/apt/sources.list" <<EOF
deb $mirror $release main
deb $mirror $release-updates main
deb ${mirror%/debian}/debian-security $release-security main
EOF
  fi
  touch "$target/.complete"
fi
if $rolling; then
  # testing/unstable Release files are valid for one week only, and the archive mirror reached from here
  # may serve an older copy: accept it rather than install nothing (this root only runs the tests).
  echo 'Acquire::Check-Valid-Until "false";' >"$target/etc/apt/apt.conf.d/99aid-xai-snapshot-mirror"
fi

bind_readonly() {  # host path → the same path (or $2) inside the root, read-only
  local source="$1" dest="$target${2:-$1}"
  if [ -d "$source" ]; then mkdir -p "$dest"; else mkdir -p "$(dirname "$dest")"; touch "$dest"; fi
  mount --bind "$source" "$dest"
  mount -o remount,bind,ro "$dest"
}

mount -t proc proc "$target/proc"
mount --rbind /sys "$target/sys"
mount --rbind /dev "$target/dev"
cp /etc/resolv.conf "$target/etc/resolv.conf"

# pip: the same configuration files, PIP_* variables, and the local indexes/wheel folders/constraint
# files they name; its download cache persists across runs.
for config in /etc/pip.conf /etc/xdg/pip "$HOME/.config/pip" "$HOME/.pip" ${PIP_CONFIG_FILE:-}; do
  if [ -e "$config" ]; then mkdir -p "$target$(dirname "$config")"; rm -rf "${target:?}$config"; cp -a "$config" "$target$config"; fi
done
pip_config="$( { pip config list 2>/dev/null || true; env | grep '^PIP_' || true; } )"
for path in $(grep -oE "(file://)?/[^ '\"]+" <<<"$pip_config" | sed 's|^file://||' | sort -u); do
  case "$path" in /etc/ssl/* | /etc/pip.conf | /etc/xdg/pip* | "$HOME"/*) continue ;; esac
  path="${path%/}"
  [ "$(basename "$path")" = simple ] && path="$(dirname "$path")"   # a local index links to files beside simple/
  [ -e "$path" ] && ! mountpoint -q "$target$path" && bind_readonly "$path"
done
mkdir -p "$cache/pip-cache-$release" "$target/root/.cache/pip"
mount --bind "$cache/pip-cache-$release" "$target/root/.cache/pip"

# The working tree, fresh each run.
rm -rf "${target:?}$inside"
mkdir -p "$target$inside"
git -C "$project" ls-files -z --cached --others --exclude-standard \
  | (cd "$project" && xargs -0 -r sh -c 'for f; do [ -e "$f" ] && printf "%s\0" "$f"; done' sh) \
  | tar -C "$project" --null -T - -cf - | tar -C "$target$inside" -xf -
[ -d "$project/../shared" ] && bind_readonly "$(cd "$project/../shared" && pwd)" "$(dirname "$inside")/shared"

carry_ca_bundle() {  # this machine's CA bundle (it may trust a TLS-terminating proxy Debian's doesn't)
  for bundle in /etc/ssl/certs/ca-certificates.crt ${PIP_CERT:-} ${SSL_CERT_FILE:-} ${REQUESTS_CA_BUNDLE:-}; do
    if [ -f "$bundle" ]; then mkdir -p "$target$(dirname "$bundle")"; cp -L "$bundle" "$target$bundle"; fi
  done
}

run_inside() {
  chroot "$target" /usr/bin/env -i HOME=/root PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    LANG=C.UTF-8 CI="${CI:-}" TERM="${TERM:-dumb}" $(env | grep '^PIP_' | tr '\n' ' ') "$@"
}

carry_ca_bundle
echo "== Debian $(cat "$target/etc/debian_version") root: QGIS and the other Debian packages (make system)"
run_inside make -C "$inside" system
carry_ca_bundle   # installing packages may have regenerated Debian's own bundle
echo "== Debian $(cat "$target/etc/debian_version") root: make $goal"
status=0
run_inside make -C "$inside" "$goal" || status=$?
echo "== make $goal in Debian $release ($(cat "$target/etc/debian_version")) exited with status $status"
exit "$status"
