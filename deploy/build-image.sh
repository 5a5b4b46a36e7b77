#!/bin/sh
# Builds the image of deploy/Dockerfile with buildah, on a Debian base made here with debootstrap
# (no container registry needed), then runs it: `ccc-etl demo` as the image's non-root user,
# against the built-in emulator. Needs root, buildah and debootstrap (Debian: `apt-get install
# buildah debootstrap`) and a release build (`cargo build --release --locked`).
#
#   sudo deploy/build-image.sh [TAG]      # default tag: localhost/ccc-etl:latest
#
# Builds and runs use chroot isolation, which works where an OCI runtime cannot set up a
# container (some CI sandboxes).
set -eu
cd "$(dirname "$0")/.."
tag=${1:-localhost/ccc-etl:latest}
base=localhost/ccc-etl-base:bookworm-minbase
if [ ! -x target/release/ccc-etl ]; then
  echo "build-image.sh: no target/release/ccc-etl: cargo build --release --locked" >&2
  exit 1
fi
if ! buildah inspect --type image "$base" >/dev/null 2>&1; then
  echo "== a Debian base with debootstrap ($base)"
  rootfs=$(mktemp -d)
  debootstrap --variant=minbase bookworm "$rootfs" http://deb.debian.org/debian >/dev/null
  # The packages debootstrap downloaded (about 110 MB) and its package lists are not needed.
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/cache/apt/*.bin \
    "$rootfs"/var/lib/apt/lists/*
  ctr=$(buildah from scratch)
  buildah copy --quiet "$ctr" "$rootfs" / >/dev/null
  buildah commit --quiet "$ctr" "$base" >/dev/null
  buildah rm "$ctr" >/dev/null
  rm -rf "$rootfs"
fi
echo "== building $tag from deploy/Dockerfile"
buildah build --quiet --isolation chroot --from "$base" -f deploy/Dockerfile -t "$tag" . >/dev/null
user=$(buildah inspect --type image --format '{{.OCIv1.Config.User}}' "$tag")
size=$(buildah images --noheading --format '{{.Size}}' "$tag" | head -1)
echo "$tag: user $user, $size"
if [ "$user" != "65532:65532" ]; then
  echo "build-image.sh: the image runs as '$user', not the non-root 65532:65532" >&2
  exit 1
fi
echo "== running it: ccc-etl demo as $user"
ctr=$(buildah from "$tag")
trap 'buildah rm "$ctr" >/dev/null 2>&1 || true' EXIT
buildah run --isolation chroot --user "$user" --workingdir /tmp "$ctr" -- \
  /usr/local/bin/ccc-etl -q demo --days 2
buildah run --isolation chroot --user "$user" "$ctr" -- \
  sh -c 'test -d /tmp/ccc-etl-demo/inbound_trend && test "$(id -u)" = 65532'
echo "the image runs ccc-etl as a non-root user"
