#!/usr/bin/env bash
# Assembles the root file system of the Portcullis runtime image in DEST:
#
#   rootfs.sh BINARY DEST
#
# - /usr/local/bin/portcullis: a stripped copy of BINARY;
# - the shared libraries BINARY needs (`ldd`) and the dynamic loader, at the paths `ldd`
#   names, and nothing else: no shell, no package manager, no coreutils;
# - /etc/ssl/certs/ca-certificates.crt from this machine (the roots for upstream TLS, JWKS and
#   OIDC discovery over HTTPS);
# - /etc/passwd and /etc/group with root, `portcullis` (65532) and `nobody` (65534), all
#   without a login shell, and an /etc/nsswitch.conf that reads only files and DNS;
# - /etc/portcullis (empty, root's: the config is mounted there), /var/lib/portcullis (empty,
#   65532's, mode 0700: for `state.path`), /tmp (1777).
#
# Used by both recipes: in the builder stage of Containerfile, and by build.sh on a machine with
# no registry. Ownership is set only when run as root (it must be, for the image to be right:
# build.sh and the Containerfile both run it as root).
set -euo pipefail
umask 022

die() { echo "rootfs.sh: $*" >&2; exit 1; }

[ $# -eq 2 ] || die "usage: rootfs.sh BINARY DEST"
bin=$1
dest=$2
[ -f "$bin" ] && [ -x "$bin" ] || die "$bin: not an executable file"
[ "$(id -u)" = 0 ] || die "must run as root (files in the image are owned by root and 65532)"
command -v ldd >/dev/null || die "ldd not found (Debian: libc-bin)"
command -v strip >/dev/null || die "strip not found (Debian: binutils)"
ca=/etc/ssl/certs/ca-certificates.crt
[ -s "$ca" ] || die "$ca missing (Debian: ca-certificates)"

mkdir -p "$dest"
[ -z "$(ls -A "$dest")" ] || die "$dest is not empty"

# The binary, stripped (a copy: BINARY itself is left as it is).
install -d -m 0755 "$dest/usr/local/bin"
install -m 0755 "$bin" "$dest/usr/local/bin/portcullis"
strip --strip-all "$dest/usr/local/bin/portcullis"

# Its shared libraries and loader. `ldd` lines are `name => /path (addr)`, `/path (addr)`
# (the loader) or `name (addr)` (the vDSO, which the kernel provides).
ldd_out=$(ldd "$dest/usr/local/bin/portcullis" 2>&1) || {
  case $ldd_out in
    *"not a dynamic executable"* | *"statically linked"*) ldd_out="" ;;
    *) die "ldd failed: $ldd_out" ;;
  esac
}
if grep -q "not found" <<<"$ldd_out"; then
  die "libraries missing on this machine: $(grep "not found" <<<"$ldd_out" | tr -s ' \t' ' ')"
fi
libs=$(awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' <<<"$ldd_out" | sort -u)
for lib in $libs; do
  install -d -m 0755 "$dest$(dirname "$lib")"
  # -L: the file, not a symbolic link to it (merged /usr links /lib64 and /lib into /usr).
  cp -L "$lib" "$dest$lib"
  chmod 0755 "$dest$lib"
done

# Certificates.
install -d -m 0755 "$dest/etc/ssl/certs"
install -m 0644 "$(readlink -f "$ca")" "$dest/etc/ssl/certs/ca-certificates.crt"

# Users and groups: no shell to log in with (there is none in the image).
cat >"$dest/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/sbin/nologin
portcullis:x:65532:65532:portcullis:/var/lib/portcullis:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
EOF
cat >"$dest/etc/group" <<'EOF'
root:x:0:
portcullis:x:65532:
nobody:x:65534:
EOF
cat >"$dest/etc/nsswitch.conf" <<'EOF'
passwd: files
group: files
shadow: files
hosts: files dns
networks: files
protocols: files
services: files
EOF
chmod 0644 "$dest/etc/passwd" "$dest/etc/group" "$dest/etc/nsswitch.conf"

# Where the config is mounted, where state is kept, and /tmp.
install -d -m 0755 "$dest/etc/portcullis"
install -d -m 0755 "$dest/var" "$dest/var/lib"
install -d -m 0700 -o 65532 -g 65532 "$dest/var/lib/portcullis"
install -d -m 1777 "$dest/tmp"

chown -R 0:0 "$dest/usr" "$dest/etc"
find "$dest" -maxdepth 1 -mindepth 1 -exec chown 0:0 {} +
chmod 0755 "$dest"
