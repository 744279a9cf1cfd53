#!/usr/bin/env bash
# make image-test: build the CPU image (target prebuilt) with podman, without a registry or a Docker engine, and
# run it: gRPC health SERVING, the probe paths and REST answering, uid 65532 without capabilities on a read-only
# root with no /tmp, a mounted model, a replay, and SIGTERM draining within the drain timeout
# (deploy/tests/image_check.py).
# Needs root and Debian's podman, runc and mmdebstrap (installed here if missing). The base image is made with
# mmdebstrap from this machine's apt sources: glibc, libgcc, libstdc++, CA certificates and tzdata, a nonroot
# user, no shell or package manager (what gcr.io/distroless/cc provides), imported as RUNTIME_IMAGE.
set -euo pipefail
cd "$(dirname "$0")/../.."

[ "$(id -u)" = 0 ] || { echo "image-test needs root (rootful podman, mmdebstrap)" >&2; exit 1; }
[ -x target/release/drsn-serve ] && [ -d .ort/cpu ] || { echo "run make ort build first (the image copies ./target: build without CARGO_TARGET_DIR)" >&2; exit 1; }
need=()
for tool in podman runc mmdebstrap; do command -v "$tool" >/dev/null || need+=("$tool"); done
if [ ${#need[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  # netavark + aardvark-dns + iptables: published ports; no buildah package needed (podman builds).
  apt-get install -y -q --no-install-recommends podman runc mmdebstrap netavark aardvark-dns iptables
fi

work=$(mktemp -d)
base=localhost/drsn-image-test-base:latest
image=localhost/drsn-serve:image-test
cleanup() {
  podman rmi -f "$image" "$base" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

# This sandbox refuses podman's default rlimits (nproc/nofile of a million): ask for 4096. runc, not crun.
cat > "$work/containers.conf" <<'CONF'
[containers]
default_ulimits = ["nofile=4096:4096", "nproc=4096:4096"]
[engine]
runtime = "runc"
CONF
export CONTAINERS_CONF="$work/containers.conf"

sources=/etc/apt/sources.list.d/debian.sources
[ -f "$sources" ] || sources=/etc/apt/sources.list
suite=$(. /etc/os-release && echo "$VERSION_CODENAME")
echo "== base image: mmdebstrap $suite (extract: no shell, no dpkg)"
mmdebstrap --quiet --variant=extract --include=libc6,libgcc-s1,libstdc++6,ca-certificates,tzdata,netbase \
  "$suite" "$work/rootfs" "$sources"
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' \
  > "$work/rootfs/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' > "$work/rootfs/etc/group"
rm -rf "$work/rootfs/etc/apt" "$work/rootfs/var/lib/apt" "$work/rootfs/var/cache/apt" "$work/rootfs/usr/share/doc"
tar -C "$work/rootfs" -c . | podman import --quiet - "$base" >/dev/null

echo "== podman build --target prebuilt"
start=$(date +%s)
podman build --quiet -f deploy/docker/Dockerfile --target prebuilt --build-arg RUNTIME_IMAGE="$base" -t "$image" .
echo "built in $(( $(date +%s) - start ))s: $(podman image inspect "$image" --format '{{.Size}}') bytes"

echo "== run and check"
DRSN_IMAGE="$image" .venv/bin/python -m pytest -q -c deploy/tests/pytest.ini deploy/tests/image_check.py
