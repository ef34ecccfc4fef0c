#!/bin/sh
# Write a one-layer OCI image archive holding only /pause, with no registry and no image
# builder: tar, gzip and sha256sum. Deterministic: the same binary gives the same digests.
#
#   mk-image.sh <pause-binary> <image-ref> <out.tar>
#   e.g. mk-image.sh target/pause/pause localhost/podwire/pause:0.1.0 out/pause-image.tar
#
# Tests also use it for other one-layer images: given a directory instead of a binary, the
# layer is the whole directory, and IMAGE_ENTRYPOINT / IMAGE_CMD (JSON) and IMAGE_USER
# replace the pause defaults.
#
# Loads with `podman load -i out.tar` and `ctr -n k8s.io images import out.tar`.
set -eu
bin=$1 ref=$2 out=$3
case $ref in *:*) ;; *) echo "mk-image.sh: image-ref must be name:tag, got '$ref'" >&2; exit 2 ;; esac
[ -e "$bin" ] || { echo "mk-image.sh: no pause binary at $bin (run make pause)" >&2; exit 2; }
entrypoint=${IMAGE_ENTRYPOINT:-'["/pause"]'} cmd=${IMAGE_CMD:-null} user=${IMAGE_USER:-65535:65535}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/root" "$work/oci/blobs/sha256"
if [ -d "$bin" ]; then
  src=$bin members=.
else
  install -m 0755 "$bin" "$work/root/pause"
  src=$work/root members=pause
fi

sha() { sha256sum "$1" | cut -d' ' -f1; }
size() { stat -c %s "$1"; }
blob() { d=$(sha "$1"); mv "$1" "$work/oci/blobs/sha256/$d"; echo "$d"; }

# The layer: just /pause, root-owned, epoch mtime.
tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner --format=posix \
    --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime \
    -C "$src" -cf "$work/layer.tar" $members
diff_id=$(sha "$work/layer.tar")
gzip -9 -n "$work/layer.tar"
lsize=$(size "$work/layer.tar.gz")
ldig=$(blob "$work/layer.tar.gz")

# The config: run /pause as 65535:65535 (kubernetes' pause image user), from /.
printf '%s' '{"architecture":"amd64","os":"linux","created":"1970-01-01T00:00:00Z",'\
'"config":{"User":"'"$user"'","Entrypoint":'"$entrypoint"',"Cmd":'"$cmd"',"WorkingDir":"/",'\
'"Labels":{"io.podwire.component":"pause"}},'\
'"rootfs":{"type":"layers","diff_ids":["sha256:'"$diff_id"'"]},'\
'"history":[{"created":"1970-01-01T00:00:00Z","created_by":"podwire pause/mk-image.sh"}]}' \
    > "$work/config.json"
csize=$(size "$work/config.json")
cdig=$(blob "$work/config.json")

printf '%s' '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",'\
'"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:'"$cdig"'","size":'"$csize"'},'\
'"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:'"$ldig"'","size":'"$lsize"'}]}' \
    > "$work/manifest.json"
msize=$(size "$work/manifest.json")
mdig=$(blob "$work/manifest.json")

# ref.name carries the full reference (podman names the image from it); containerd reads
# io.containerd.image.name.
printf '%s' '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json",'\
'"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:'"$mdig"'","size":'"$msize"','\
'"platform":{"architecture":"amd64","os":"linux"},'\
'"annotations":{"io.containerd.image.name":"'"$ref"'","org.opencontainers.image.ref.name":"'"$ref"'"}}]}' \
    > "$work/oci/index.json"
printf '%s' '{"imageLayoutVersion":"1.0.0"}' > "$work/oci/oci-layout"

mkdir -p "$(dirname "$out")"
tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$work/oci" -cf "$out.tmp" oci-layout index.json blobs
mv "$out.tmp" "$out"
echo "$out: $ref manifest sha256:$mdig, layer $lsize bytes (gzip), archive $(size "$out") bytes"
