#!/usr/bin/env bash
# Builds the Portcullis runtime image from a binary already built, without pulling anything:
#
#   deploy/container/build.sh BINARY [TAG]      # e.g. target/release/portcullis
#
# The image is `localhost/portcullis:TAG` (TAG defaults to the binary's version) in the local
# containers storage (Buildah, Podman). It is the runtime stage of Containerfile: rootfs.sh
# assembles its root (the stripped binary, the libraries `ldd` lists and the loader, this
# machine's CA certificates, passwd/group for 65532, /etc/portcullis, /var/lib/portcullis,
# /tmp) and `buildah bud --pull=never` builds Containerfile.local from it. The libraries are
# this machine's, so the binary must have been built against a glibc no newer than this
# machine's: build it here (`cargo build --release --locked`).
#
# Needs root (files in the image belong to root and 65532) and Buildah; as root, installs
# Buildah with apt-get when it is missing. Buildah's defaults are used (overlay storage);
# where overlay cannot be mounted, the vfs driver is used instead. STORAGE_DRIVER and
# BUILDAH_ISOLATION in the environment are honoured. SOURCE_DATE_EPOCH, when set, fixes the
# image's timestamps (a reproducible image from the same binary and machine).
# Prints the image's name on the last line of standard output.
set -euo pipefail
umask 022

here=$(cd "$(dirname "$0")" && pwd)
die() { echo "build.sh: $*" >&2; exit 1; }

[ $# -ge 1 ] && [ $# -le 2 ] || die "usage: build.sh BINARY [TAG]"
bin=$1
[ -f "$bin" ] && [ -x "$bin" ] || die "$bin: not an executable file"
[ "$(id -u)" = 0 ] || die "must run as root (the image's files belong to root and 65532)"

# `portcullis version` prints `portcullis 0.1.0` or `portcullis 0.1.0 (commit abc123)`.
version_line=$("$bin" version) || die "$bin version: failed"
version=$(awk '{ print $2 }' <<<"$version_line")
commit=$(sed -n 's/.*(commit \([^)]*\)).*/\1/p' <<<"$version_line")
[ "$commit" != unknown ] || commit=""
[ -n "$version" ] || die "cannot read the version from '$version_line'"
tag=${2:-$version}
[[ $tag =~ ^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$ ]] || die "invalid tag: $tag"
image=localhost/portcullis:$tag

if ! command -v buildah >/dev/null 2>&1; then
  echo "build.sh: installing buildah" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq buildah >/dev/null
fi

# No RUN step is built, so no namespace is needed; chroot isolation works where they are not.
export BUILDAH_ISOLATION=${BUILDAH_ISOLATION:-chroot}
if [ -z "${STORAGE_DRIVER:-}" ]; then
  # Overlay where the kernel and storage allow it, else vfs (slower, larger on disk; the image
  # is the same).
  if probe=$(buildah from --pull=never scratch 2>/dev/null) && buildah mount "$probe" >/dev/null 2>&1; then
    buildah umount "$probe" >/dev/null 2>&1 || true
    buildah rm "$probe" >/dev/null 2>&1 || true
  else
    if [ -n "${probe:-}" ]; then buildah rm "$probe" >/dev/null 2>&1 || true; fi
    echo "build.sh: overlay storage unavailable here; using the vfs driver" >&2
    export STORAGE_DRIVER=vfs
  fi
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/portcullis-image.XXXXXX")
trap 'rm -rf "$work"' EXIT

"$here/rootfs.sh" "$bin" "$work/rootfs"
tar_time=()
ts_args=()
if [ -n "${SOURCE_DATE_EPOCH:-}" ]; then
  tar_time=(--mtime="@$SOURCE_DATE_EPOCH" --clamp-mtime)
  ts_args=(--timestamp "$SOURCE_DATE_EPOCH")
fi
mkdir "$work/context"
tar --numeric-owner --sort=name "${tar_time[@]}" -C "$work/rootfs" -cf "$work/context/rootfs.tar" .

buildah bud --quiet --pull=never --layers=false --format oci "${ts_args[@]}" \
  --build-arg "VERSION=$version" --build-arg "PORTCULLIS_COMMIT=$commit" \
  -f "$here/Containerfile.local" -t "$image" "$work/context" >/dev/null

size=$(buildah images --format '{{.Size}}' "$image" | head -n1)
echo "build.sh: built $image ($size; portcullis $version${commit:+, commit $commit})" >&2
echo "$image"
