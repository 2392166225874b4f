#!/usr/bin/env bash
# Builds docker/Dockerfile and runs the image, from a fresh Debian 12 machine, as root, offline
# except for the package registries (Debian's archive, PyPI) that this machine already reaches.
#
# No container registry is reachable, so the Dockerfile's public FROM is replaced (BASE_IMAGE)
# by a Debian 12 root file system made here with debootstrap and `podman import`ed. The torch
# stack (~3 GB of wheels) comes from a wheelhouse that pip fills the way this machine's pip is
# configured (local files where it has them) and that is bind-mounted into the build; the other
# pins come from PyPI through this machine's CA bundle. docker/README.md says why and what it costs.
#
# Rootful podman with runc (crun fails on this host's cgroups), the cgroupfs manager (no
# systemd), an overlay graph root in a fresh temp dir (removed at the end) and raised ulimits.
#
# Usage: bash ci/podman_image_check.sh            (KEEP_TMP=1 keeps the temp dir for a look)
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)

if [[ $(id -u) -ne 0 ]]; then
    echo "error: run as root (rootful podman, debootstrap)" >&2
    exit 2
fi

START=$SECONDS
declare -a TIMINGS=()
phase() {  # phase NAME CMD...: runs CMD, records its wall time
    local name=$1 began=$SECONDS
    shift
    echo "== ${name}"
    "$@"
    TIMINGS+=("$(printf '%-28s %4ds' "$name" $((SECONDS - began)))")
}

WORK=$(mktemp -d /var/tmp/crypson-podman.XXXXXX)
IMAGE=localhost/crypson:ci
BASE=localhost/crypson-ci-base:bookworm
PODMAN=(podman --root "$WORK/graph" --runroot "$WORK/run" --storage-driver overlay
        --cgroup-manager cgroupfs --runtime runc --events-backend file --tmpdir "$WORK/podman-tmp")
# Explicit ulimits: podman's rootful defaults (nofile 1048576, nproc 4194304) exceed this machine's
# hard limits, and without CAP_SYS_RESOURCE runc then fails ("error setting rlimit type 7").
# The most it accepts: nofile up to the hard limit, nproc up to kernel.pid_max (measured here).
limit() { [[ $1 == unlimited ]] && echo "$2" || echo $(($1 < $2 ? $1 : $2)); }
NOFILE=$(limit "$(ulimit -Hn)" 1048576)
NPROC=$(limit "$(ulimit -Hu)" "$(cat /proc/sys/kernel/pid_max)")
ULIMITS=(--ulimit "nofile=$NOFILE:$NOFILE" --ulimit "nproc=$NPROC:$NPROC")

cleanup() {
    local rc=$?
    if [[ ${KEEP_TMP:-0} == 1 ]]; then
        echo "kept $WORK"
    else
        # Only what this script made: its containers and images, then any mount left under the
        # temp dir (containers/storage bind-mounts its overlay folder), then the dir itself.
        "${PODMAN[@]}" rm --all --force >/dev/null 2>&1 || true
        "${PODMAN[@]}" rmi --all --force >/dev/null 2>&1 || true
        awk -v work="$WORK" '$2 ~ "^"work {print $2}' /proc/mounts | sort -r | xargs -r -n1 umount -l
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT

install_tools() {
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends \
        podman runc debootstrap containernetworking-plugins iptables ca-certificates >/dev/null
    podman --version
}

# The first Debian archive URI that this machine's apt uses for bookworm (deb822 or one-line form).
debian_mirror() {
    local uri
    uri=$(awk '
        /^URIs:/   { uris = $2 }
        /^Suites:/ { for (i = 2; i <= NF; i++) if ($i == "bookworm") print uris }
        /^deb /    { if ($3 == "bookworm") print $2 }
    ' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null | head -n1)
    echo "${uri:-http://deb.debian.org/debian}"
}

make_base() {
    local rootfs=$WORK/rootfs mirror
    mirror=$(debian_mirror)
    echo "mirror: $mirror"
    debootstrap --variant=minbase --include=ca-certificates bookworm "$rootfs" "$mirror" >"$WORK/debootstrap.log"
    # Reach Debian and PyPI the way this machine does: its apt sources and settings, its CA
    # bundle (it includes the egress proxy's CA) and pip told to use that bundle (PIP_CERT's file).
    cp -a /etc/apt/sources.list.d/. "$rootfs/etc/apt/sources.list.d/" 2>/dev/null || true
    [[ -f /etc/apt/sources.list ]] && cp /etc/apt/sources.list "$rootfs/etc/apt/sources.list"
    [[ -n $(ls /etc/apt/sources.list.d/*.sources 2>/dev/null) ]] && : >"$rootfs/etc/apt/sources.list"
    cp -a /etc/apt/apt.conf.d/. "$rootfs/etc/apt/apt.conf.d/"
    cp -a /usr/local/share/ca-certificates/. "$rootfs/usr/local/share/ca-certificates/" 2>/dev/null || true
    cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
    printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' >"$rootfs/etc/pip.conf"
    local index
    index=$(host_pip config get global.index-url 2>/dev/null || true)
    [[ $index == http* ]] && printf 'index-url = %s\n' "$index" >>"$rootfs/etc/pip.conf"
    tar -C "$rootfs" -c . | "${PODMAN[@]}" import - "$BASE" >/dev/null
    rm -rf "$rootfs"
}

host_pip() {
    if [[ -x $REPO/.venv/bin/pip ]]; then "$REPO/.venv/bin/pip" "$@"; else python3 -m pip "$@"; fi
}

# The lock's torch stack as wheels, from wherever this machine's pip finds them.
make_wheelhouse() {
    grep -E '^(torch|torchvision|triton|nvidia-[a-z0-9-]+|cuda-[a-z0-9-]+)==' requirements.lock >"$WORK/torch.txt"
    # This machine's Python is the image's (3.11, x86_64), so pip picks the wheels the image needs.
    host_pip download --quiet --no-deps --only-binary=:all: -d "$WORK/wheelhouse" -r "$WORK/torch.txt" \
        2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
    du -sh "$WORK/wheelhouse"
}

build_image() {
    "${PODMAN[@]}" build --network host "${ULIMITS[@]}" --layers --format docker \
        --volume "$WORK/wheelhouse:/wheelhouse:ro" \
        --build-arg BASE_IMAGE="$BASE" \
        --build-arg VARIANT=cuda \
        --build-arg TORCH_PIP_ARGS="--no-index --find-links /wheelhouse" \
        -f docker/Dockerfile -t "$IMAGE" . >"$WORK/build.log" 2>&1 || {
        tail -n 60 "$WORK/build.log" >&2
        return 1
    }
    "${PODMAN[@]}" image ls
}

# Every check runs without a network: the component must not need one for these stages.
run_image() {
    "${PODMAN[@]}" run --rm --network none "${ULIMITS[@]}" "$@"
}

check_image() {
    local out uid
    uid=$(run_image --entrypoint id "$IMAGE" -u)
    [[ $uid != 0 ]] || { echo "error: the image runs as root" >&2; return 1; }
    echo "runs as uid $uid"
    out=$(run_image "$IMAGE" --help)
    grep -q 'stage' <<<"$out" || { echo "error: 'crypson --help' lists no stage command:" >&2; echo "$out" >&2; return 1; }
    out=$(run_image "$IMAGE" stage ingest --help)
    grep -q -- '--params' <<<"$out" || { echo "error: 'crypson stage ingest --help':" >&2; echo "$out" >&2; return 1; }
    # A tiny run of the first three stages; validate fails loudly if the prepared data is wrong.
    # shellcheck disable=SC2016  # the container's bash expands these, not this one
    run_image --entrypoint bash "$IMAGE" -c '
        set -euo pipefail
        crypson preset tiny
        crypson stage ingest
        crypson stage prepare
        crypson stage validate
        test -s data/prepared/manifest.json
        echo "tiny stages ok: $(ls data/prepared | tr "\n" " ")"'
}

phase "apt-get install" install_tools
ulimit -n "$NOFILE"
phase "debootstrap + import" make_base
phase "wheelhouse (torch stack)" make_wheelhouse
phase "podman build" build_image
phase "podman run checks" check_image
echo "== timings"
printf '%s\n' "${TIMINGS[@]}"
echo "total (cleanup aside)         $((SECONDS - START))s"
