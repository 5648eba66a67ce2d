#!/usr/bin/env bash
# Builds the container image with deploy/container/build.sh from BINARY and checks it:
#
#   tests/deploy/image_check.sh BINARY            # e.g. target/release/portcullis
#
# - Containerfile and Containerfile.local give the runtime image the same configuration;
# - the image's size: compressed layers (what a registry stores and a pull transfers) under
#   IMAGE_MAX_MB (default 30), unpacked under IMAGE_MAX_UNPACKED_MB (default 40; the stripped
#   binary alone is about 31 MiB);
# - its configuration: user 65532:65532, entrypoint, command, ports, OCI labels;
# - its contents: no shell, no executable but the gateway and the libraries it links,
#   /var/lib/portcullis owned by 65532, the CA bundle and passwd entries;
# - a run of the image's entrypoint with examples/quickstart.yaml: `/hello` answers 200 from
#   the built-in echo service, `/readyz` 200, the process runs as 65532 with a read-only root
#   and writes its state to the state volume, and on SIGTERM it exits 0.
#
# The run uses Podman (`podman run --read-only`, the config mounted, a named volume for
# /var/lib/portcullis, ports published on 127.0.0.1) where the machine lets containers start,
# and otherwise a chroot of the mounted image, as uid 65532, in a private mount namespace where
# the root is read-only but for a state folder and /tmp. IMAGE_CHECK_RUN=podman or chroot
# forces one (podman then fails rather than falling back).
#
# IMAGE_CHECK_IMAGE=NAME checks an image already built (e.g. with Containerfile) instead of
# building one; BINARY then only gives the expected version. That image is left in place.
#
# Needs root and buildah, curl, util-linux (unshare, mount); podman (and runc, where crun
# cannot start containers, e.g. under hybrid cgroups) for the Podman run. Everything it makes
# (image, containers, volume, mounts, processes, temporary files) is removed on exit, failed
# or not. The binary is copied first, so a rebuild during the check does not change it.
set -euo pipefail
umask 022

repo=$(cd "$(dirname "$0")/../.." && pwd)
ctx=$repo/deploy/container
quickstart=$repo/examples/quickstart.yaml
max_mb=${IMAGE_MAX_MB:-30}
max_unpacked_mb=${IMAGE_MAX_UNPACKED_MB:-40}
run_mode=${IMAGE_CHECK_RUN:-auto}

passed=0
say() { echo "image_check: $*" >&2; }
ok() { passed=$((passed + 1)); say "ok: $*"; }
fail() {
  say "FAIL: $*"
  say "$passed passed, 1 failed"
  exit 1
}

[ $# -eq 1 ] || { echo "usage: image_check.sh BINARY" >&2; exit 2; }
[ -f "$1" ] && [ -x "$1" ] || fail "$1: not an executable file"
[ "$(id -u)" = 0 ] || fail "must run as root (build.sh, mounts, chroot)"
case $run_mode in auto | podman | chroot) ;; *) fail "IMAGE_CHECK_RUN: auto, podman or chroot, not $run_mode" ;; esac
for tool in curl unshare mount; do
  command -v "$tool" >/dev/null 2>&1 || fail "$tool not found (Debian: apt-get install curl util-linux mount)"
done

# ---- what to clean up --------------------------------------------------------------------
tmp=$(mktemp -d "${TMPDIR:-/tmp}/portcullis-image-check.XXXXXX")
id=$$-$RANDOM
tag=check-$id
image=${IMAGE_CHECK_IMAGE:-localhost/portcullis:$tag}
remove_image=$([ -n "${IMAGE_CHECK_IMAGE:-}" ] || echo yes)
ctr=""            # buildah working container, mounted
pod_name=""       # podman container
pod_volume=""     # podman named volume
gw_pid=""         # gateway run in the chroot

cleanup() {
  local rc=$?
  set +e
  if [ -n "$gw_pid" ] && kill -0 "$gw_pid" 2>/dev/null; then
    kill -KILL "$gw_pid" 2>/dev/null
    wait "$gw_pid" 2>/dev/null
  fi
  if [ -n "$pod_name" ]; then podman rm -f -t 0 "$pod_name" >/dev/null 2>&1; fi
  if [ -n "$pod_volume" ]; then podman volume rm -f "$pod_volume" >/dev/null 2>&1; fi
  if [ -n "$ctr" ]; then
    buildah umount "$ctr" >/dev/null 2>&1
    buildah rm "$ctr" >/dev/null 2>&1
  fi
  if [ -n "$remove_image" ] && command -v buildah >/dev/null 2>&1 \
    && buildah inspect --type image "$image" >/dev/null 2>&1; then
    buildah rmi "$image" >/dev/null 2>&1 || say "could not remove $image"
  fi
  rm -rf "$tmp"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

cp "$1" "$tmp/portcullis"
bin=$tmp/portcullis
version=$("$bin" version | awk '{ print $2 }')

# ---- the two recipes agree ------------------------------------------------------------------
# The runtime stage's instructions, continuation lines joined, ARG/COPY/ADD (which differ by
# design: a stage or a tar archive) and comments left out.
runtime_config() {
  awk '
    /^FROM / { out = "" }
    /^[[:space:]]*#/ || /^[[:space:]]*$/ { next }
    { line = line $0 }
    /\\$/ { sub(/\\$/, "", line); next }
    { gsub(/[[:space:]]+/, " ", line); if (line !~ /^(ARG|COPY|ADD) /) out = out line "\n"; line = "" }
    END { printf "%s", out }
  ' "$1"
}
if ! diff <(runtime_config "$ctx/Containerfile") <(runtime_config "$ctx/Containerfile.local") >"$tmp/recipes.diff"; then
  cat "$tmp/recipes.diff" >&2
  fail "Containerfile and Containerfile.local configure the runtime image differently (above)"
fi
ok "Containerfile and Containerfile.local configure the runtime image alike"

# ---- build ---------------------------------------------------------------------------------
if [ -n "$remove_image" ]; then
  start=$(date +%s)
  "$ctx/build.sh" "$bin" "$tag" >"$tmp/build.out" 2>"$tmp/build.err" || {
    cat "$tmp/build.err" >&2
    fail "build.sh failed"
  }
  [ "$(tail -n1 "$tmp/build.out")" = "$image" ] || fail "build.sh did not report $image: $(cat "$tmp/build.out")"
  ok "build.sh built $image in $(($(date +%s) - start))s"
fi

# The storage driver build.sh chose (the same probe), for podman and buildah here too.
if [ -z "${STORAGE_DRIVER:-}" ] && command -v buildah >/dev/null 2>&1; then
  if probe=$(buildah from --pull=never scratch 2>/dev/null) && buildah mount "$probe" >/dev/null 2>&1; then
    buildah umount "$probe" >/dev/null 2>&1 || true
    buildah rm "$probe" >/dev/null 2>&1 || true
  else
    if [ -n "${probe:-}" ]; then buildah rm "$probe" >/dev/null 2>&1 || true; fi
    export STORAGE_DRIVER=vfs
  fi
fi
if [ -z "$remove_image" ]; then
  buildah inspect --type image "$image" >/dev/null 2>&1 || fail "no image $image here"
  say "checking $image (not built here)"
fi

# ---- size --------------------------------------------------------------------------------
sum_blobs() { find "$1/blobs" -type f -printf '%s\n' | awk '{ s += $1 } END { print s + 0 }'; }
buildah push --quiet "$image" "oci:$tmp/oci-gz:$tag" >/dev/null 2>"$tmp/push.err" \
  || fail "buildah push (compressed): $(cat "$tmp/push.err")"
compressed=$(sum_blobs "$tmp/oci-gz")
rm -rf "$tmp/oci-gz"
# The layers as stored here, uncompressed: the sizes in the local manifest's "layers".
unpacked=$(buildah inspect --type image --format '{{.Manifest}}' "$image" \
  | sed -n 's/.*"layers":\[\([^]]*\)\].*/\1/p' | grep -o '"size":[0-9]*' \
  | awk -F: '{ s += $2 } END { print s + 0 }')
[ "$unpacked" -gt 0 ] || fail "cannot read the layers' size from the image's manifest"
mb() { awk -v b="$1" 'BEGIN { printf "%.1f MB", b / 1000000 }'; }
[ "$compressed" -lt $((max_mb * 1000000)) ] \
  || fail "image is $(mb "$compressed") compressed, over the limit of $max_mb MB"
[ "$unpacked" -lt $((max_unpacked_mb * 1000000)) ] \
  || fail "image is $(mb "$unpacked") unpacked, over the limit of $max_unpacked_mb MB"
ok "size: $(mb "$compressed") compressed (limit $max_mb MB), $(mb "$unpacked") unpacked (limit $max_unpacked_mb MB)"

# ---- configuration ---------------------------------------------------------------------------
cfg() { buildah inspect --type image --format "$1" "$image"; }
user=$(cfg '{{.OCIv1.Config.User}}')
[ "$user" = "65532:65532" ] || fail "image user is '$user', not 65532:65532"
entrypoint=$(cfg '{{range .OCIv1.Config.Entrypoint}}{{.}} {{end}}')
cmd=$(cfg '{{range .OCIv1.Config.Cmd}}{{.}} {{end}}')
[ "$entrypoint" = "/usr/local/bin/portcullis " ] || fail "entrypoint is '$entrypoint'"
[ "$cmd" = "serve --config /etc/portcullis/portcullis.yaml " ] || fail "command is '$cmd'"
ports=$(cfg '{{range $p, $_ := .OCIv1.Config.ExposedPorts}}{{$p}} {{end}}')
[ "$ports" = "8080/tcp 9901/tcp " ] || fail "exposed ports are '$ports', not 8080/tcp 9901/tcp"
label() { cfg "{{index .OCIv1.Config.Labels \"org.opencontainers.image.$1\"}}"; }
[ "$(label licenses)" = "Apache-2.0" ] || fail "label licenses is '$(label licenses)'"
[ "$(label version)" = "$version" ] || fail "label version is '$(label version)', the binary's is $version"
[[ $(label source) == https://* ]] || fail "label source is '$(label source)'"
ok "config: user $user, entrypoint $entrypoint$cmd, ports $ports, labels licenses/version/source"

# ---- contents ---------------------------------------------------------------------------------
ctr=$(buildah from --pull=never --name "portcullis-check-$id" "$image")
root=$(buildah mount "$ctr")
for sh in /bin/sh /bin/bash /bin/dash /bin/ash /bin/busybox /usr/bin/sh /usr/bin/bash /usr/bin/dash /usr/bin/busybox; do
  if [ -e "$root$sh" ] || [ -L "$root$sh" ]; then fail "the image has a shell: $sh"; fi
done
# Every executable file is the gateway or a shared library (the loader included).
others=$(cd "$root" && find . -type f -perm /111 ! -path ./usr/local/bin/portcullis ! -name '*.so*' | sed 's/^\.//')
[ -z "$others" ] || fail "executables other than the gateway and its libraries: $others"
[ -x "$root/usr/local/bin/portcullis" ] || fail "/usr/local/bin/portcullis missing"
[ -s "$root/etc/ssl/certs/ca-certificates.crt" ] || fail "/etc/ssl/certs/ca-certificates.crt missing"
grep -q '^portcullis:x:65532:65532:' "$root/etc/passwd" || fail "/etc/passwd has no portcullis (65532)"
grep -q '^portcullis:x:65532:' "$root/etc/group" || fail "/etc/group has no portcullis (65532)"
[ "$(stat -c %u:%g "$root/var/lib/portcullis")" = 65532:65532 ] || fail "/var/lib/portcullis is not 65532's"
[ "$(stat -c %a "$root/tmp")" = 1777 ] || fail "/tmp is not mode 1777"
if [ -n "$(ls -A "$root/etc/portcullis")" ]; then fail "/etc/portcullis is not empty"; fi
ok "contents: no shell, $(cd "$root" && find . -type f | wc -l) files, executables: the gateway and $(cd "$root" && find . -type f -name '*.so*' | wc -l) libraries"

# ---- run -------------------------------------------------------------------------------------
port_busy() {
  # A listening TCP socket on port $1, IPv4 or IPv6, any address (state 0A).
  local hex
  hex=$(printf ':%04X' "$1")
  awk -v p="$hex" 'FNR > 1 && $4 == "0A" && substr($2, length($2) - 4) == p { f = 1 } END { exit !f }' \
    /proc/net/tcp /proc/net/tcp6 2>/dev/null
}
free_port() {
  local p=$((20000 + RANDOM % 30000)) skip=${1:-0}
  while port_busy "$p" || [ "$p" = "$skip" ]; do p=$((20000 + RANDOM % 30000)); done
  echo "$p"
}
# The status of GET $1 (000 when nothing answers); the body goes to $2.
http_status() { curl -s -o "$2" -w '%{http_code}' --max-time 5 "$1" || true; }
wait_ready() {
  for _ in $(seq 1 100); do
    [ "$(http_status "$1" /dev/null)" = 200 ] && return 0
    "$2" || return 1
    sleep 0.2
  done
  return 1
}
check_answers() {
  local hello=$1 readyz=$2 status
  status=$(http_status "$hello" "$tmp/hello.body")
  [ "$status" = 200 ] || fail "GET $hello answered $status, not 200: $(head -c 500 "$tmp/hello.body" 2>/dev/null)"
  grep -q '"path":"/hello"' "$tmp/hello.body" \
    || fail "GET $hello was not answered by the echo service: $(head -c 500 "$tmp/hello.body")"
  status=$(http_status "$readyz" "$tmp/readyz.body")
  [ "$status" = 200 ] || fail "GET $readyz answered $status, not 200"
  ok "GET /hello 200 from the echo service, GET /readyz 200"
}
check_uid() {
  local uid
  uid=$(awk '/^Uid:/ { print $2 ":" $3 }' "/proc/$1/status")
  [ "$uid" = 65532:65532 ] || fail "the gateway runs as uid $uid, not 65532"
}

podman_fails=""
run_podman() {
  local cfg=$tmp/podman/portcullis.yaml hport aport runtime out rc
  mkdir -p "$tmp/podman"
  # The quickstart inside a container: listen on all of the container's addresses (the admin
  # listener then needs a token; /readyz stays open), state on the volume.
  sed -e 's/^\(  listen: \)127\.0\.0\.1:8080$/\10.0.0.0:8080/' \
      -e 's/^\(  listen: \)127\.0\.0\.1:9901$/\10.0.0.0:9901\n  auth:\n    bearer_token: image-check-admin-token-0123456789/' \
      "$quickstart" >"$cfg"
  printf 'state:\n  path: /var/lib/portcullis/portcullis.state\n' >>"$cfg"
  grep -q '0.0.0.0:8080' "$cfg" && grep -q '0.0.0.0:9901' "$cfg" \
    || fail "examples/quickstart.yaml no longer listens on 127.0.0.1:8080 / 127.0.0.1:9901: update this check"
  "$bin" check --config "$cfg" >/dev/null || fail "the quickstart adapted for a container is invalid (errors above)"
  chmod 0644 "$cfg"
  hport=$(free_port)
  aport=$(free_port "$hport")
  pod_volume=portcullis-check-$id-state
  podman volume create "$pod_volume" >/dev/null
  # Podman's default limits (1048576 open files) can be above what this process may set.
  local nofile nproc
  nofile=$(ulimit -Hn); [ "$nofile" = unlimited ] || [ "$nofile" -gt 1048576 ] && nofile=1048576
  nproc=$(ulimit -Hu); { [ "$nproc" = unlimited ] || [ "$nproc" -gt 32768 ]; } && nproc=32768
  for runtime in "" runc; do
    if [ -n "$runtime" ]; then
      command -v "$runtime" >/dev/null 2>&1 || continue
    fi
    pod_name=portcullis-check-$id
    podman rm -f -t 0 "$pod_name" >/dev/null 2>&1 || true
    rc=0
    out=$(podman ${runtime:+--runtime "$runtime"} run -d --name "$pod_name" --read-only \
      --ulimit "nofile=$nofile:$nofile" --ulimit "nproc=$nproc:$nproc" \
      -v "$cfg:/etc/portcullis/portcullis.yaml:ro" -v "$pod_volume:/var/lib/portcullis" \
      -p "127.0.0.1:$hport:8080" -p "127.0.0.1:$aport:9901" "$image" 2>&1) || rc=$?
    if [ "$rc" = 0 ]; then
      [ -z "$podman_fails" ] || say "$podman_fails"
      say "podman run started the container (runtime ${runtime:-$(podman info --format '{{.Host.OCIRuntime.Name}}' 2>/dev/null)})"
      break
    fi
    podman_fails+="${podman_fails:+; }podman${runtime:+ --runtime $runtime} run: $(tail -n1 <<<"$out")"
  done
  if [ "$rc" != 0 ]; then
    podman rm -f -t 0 "$pod_name" >/dev/null 2>&1 || true
    pod_name=""
    return 1
  fi
  running() { [ "$(podman inspect --format '{{.State.Running}}' "$pod_name" 2>/dev/null)" = true ]; }
  wait_ready "http://127.0.0.1:$aport/readyz" running || {
    podman logs "$pod_name" >&2 || true
    fail "the container did not become ready on 127.0.0.1:$aport (logs above)"
  }
  check_answers "http://127.0.0.1:$hport/hello" "http://127.0.0.1:$aport/readyz"
  check_uid "$(podman inspect --format '{{.State.Pid}}' "$pod_name")"
  ok "podman run --read-only: the gateway runs as 65532:65532"
  local voldir
  voldir=$(podman volume inspect --format '{{.Mountpoint}}' "$pod_volume")
  [ -e "$voldir/portcullis.state.lock" ] || fail "no state written to the volume at /var/lib/portcullis"
  ok "state written to the volume at /var/lib/portcullis"
  podman stop -t 40 "$pod_name" >/dev/null
  rc=$(podman inspect --format '{{.State.ExitCode}}' "$pod_name")
  [ "$rc" = 0 ] || { podman logs "$pod_name" >&2; fail "after SIGTERM the gateway exited $rc, not 0"; }
  ok "SIGTERM (podman stop): exit 0"
}

run_chroot() {
  local cfg=$root/etc/portcullis/portcullis.yaml state=$tmp/state hport=8080 aport=9901 rc
  # The quickstart as it is, on other ports if its own are taken; state in the state folder.
  if port_busy 8080 || port_busy 9901; then
    hport=$(free_port)
    aport=$(free_port "$hport")
    say "127.0.0.1:8080 or :9901 is in use; the quickstart listens on $hport and $aport instead"
  fi
  sed -e "s/127\.0\.0\.1:8080/127.0.0.1:$hport/g" -e "s/127\.0\.0\.1:9901/127.0.0.1:$aport/g" \
    "$quickstart" >"$cfg"
  printf 'state:\n  path: /var/lib/portcullis/portcullis.state\n' >>"$cfg"
  chmod 0644 "$cfg"
  install -d -m 0700 -o 65532 -g 65532 "$state"
  # A private mount namespace: the root read-only, a writable state folder and /tmp, then the
  # image's entrypoint and command as the image's user. Each exec keeps the PID.
  # shellcheck disable=SC2016,SC2086
  unshare --mount --propagation private -- sh -ec '
    root=$1 state=$2 user=$3; shift 3
    mount --bind "$root" "$root"
    mount -o remount,bind,ro "$root"
    mount --bind "$state" "$root/var/lib/portcullis"
    mount -t tmpfs -o mode=1777,size=16m tmpfs "$root/tmp"
    exec chroot --userspec="$user" "$root" "$@"
  ' sh "$root" "$state" "$user" $entrypoint $cmd >"$tmp/gateway.log" 2>&1 &
  gw_pid=$!
  running() { kill -0 "$gw_pid" 2>/dev/null; }
  wait_ready "http://127.0.0.1:$aport/readyz" running || {
    cat "$tmp/gateway.log" >&2
    fail "the gateway in the chroot did not become ready on 127.0.0.1:$aport (log above)"
  }
  check_answers "http://127.0.0.1:$hport/hello" "http://127.0.0.1:$aport/readyz"
  check_uid "$gw_pid"
  ok "chroot of the image, read-only root: the gateway runs as 65532:65532"
  [ -e "$state/portcullis.state.lock" ] || fail "no state written to /var/lib/portcullis"
  ok "state written to /var/lib/portcullis"
  kill -TERM "$gw_pid"
  for _ in $(seq 1 300); do running || break; sleep 0.2; done
  if running; then
    cat "$tmp/gateway.log" >&2
    fail "the gateway still runs 60s after SIGTERM"
  fi
  rc=0
  wait "$gw_pid" || rc=$?
  gw_pid=""
  [ "$rc" = 0 ] || { cat "$tmp/gateway.log" >&2; fail "after SIGTERM the gateway exited $rc, not 0 (log above)"; }
  ok "SIGTERM: exit 0"
}

method=""
if [ "$run_mode" != chroot ]; then
  if command -v podman >/dev/null 2>&1; then
    if run_podman; then
      method=podman
    else
      [ "$run_mode" = podman ] && fail "podman cannot start containers here: $podman_fails"
      say "podman cannot start containers here ($podman_fails); running the image in a chroot instead"
    fi
  else
    [ "$run_mode" = podman ] && fail "podman not found (Debian: apt-get install podman)"
    say "podman not found; running the image in a chroot instead"
  fi
fi
if [ -z "$method" ]; then
  run_chroot
  method=chroot
fi

say "image $(mb "$compressed") compressed, $(mb "$unpacked") unpacked; run with $method"
say "$passed passed, 0 failed"
