#!/usr/bin/env bash
# Build a local stand-in for the upstream PyTorch runtime base image, for machines that cannot reach Docker Hub:
# Debian bookworm by debootstrap from the Debian mirror this machine's apt already uses + a Python venv at
# /opt/conda (where pytorch/pytorch keeps its Python, so `python`/`pip` resolve the same way) + the CUDA 12.8 build
# of torch from PyPI.
# Prints the image tag as the only line on stdout (progress goes to stderr), so callers can do
# base="$(docker/local-base.sh)". Reuses an existing image unless --force is given. --print-mirror prints the
# Debian mirror it would use and exits.
set -euo pipefail

usage() { echo "usage: $0 [--force | --print-mirror]   (env: LOCAL_BASE_TAG, DEBIAN_MIRROR, APT_ETC)" >&2; exit 2; }

TORCH_VERSION=2.9.1
TAG="${LOCAL_BASE_TAG:-ocelot-local-base:bookworm-torch${TORCH_VERSION}}"
ROOTFS_TAG="${TAG%%:*}:bookworm-rootfs"
APT_ETC="${APT_ETC:-/etc/apt}"

# The first http(s) URI of an enabled `deb` source whose path has a `debian` component (a Debian archive, not
# debian-security nor another distribution's), from deb822 files (sources.list.d/*.sources: `URIs:` of a stanza
# with `Types: deb`) and one-line files (sources.list, sources.list.d/*.list: `deb [options] URI suite ...`).
apt_debian_mirror() {
  local etc="$1" file files=()
  for file in "$etc"/sources.list.d/*.sources "$etc"/sources.list "$etc"/sources.list.d/*.list; do
    [[ -f "$file" && -r "$file" ]] && files+=("$file")
  done
  ((${#files[@]})) || return 0
  awk '
    function debian(uri) { return uri ~ /^https?:\/\/[^\/]+(\/[^\/]+)*\/debian(\/.*)?$/ }
    function flush() {
      if (types ~ /(^| )deb( |$)/ && enabled !~ /^(no|false)$/)
        for (i = 1; i <= n; i++) if (debian(uris[i])) { print uris[i]; found = 1; exit }
      types = ""; enabled = ""; n = 0
    }
    FNR == 1 { flush() }
    FILENAME ~ /\.sources$/ {
      if ($0 ~ /^[ \t]*$/) { flush(); next }  # a blank line ends a stanza; a comment line does not
      line = $0; sub(/#.*/, "", line)
      if (line ~ /^[ \t]*$/) next
      key = tolower(line); sub(/:.*/, "", key)
      value = line; sub(/^[^:]*:[ \t]*/, "", value); gsub(/[ \t]+$/, "", value)
      if (key == "types") types = value
      else if (key == "enabled") enabled = tolower(value)
      else if (key == "uris") n = split(value, uris, /[ \t]+/)
      next
    }
    {
      line = $0; sub(/#.*/, "", line)
      nf = split(line, f, /[ \t]+/)
      j = (f[1] == "") ? 2 : 1
      if (f[j] != "deb") next
      j++
      if (f[j] ~ /^\[/) { while (f[j] !~ /\]$/ && j < nf) j++; j++ }
      if (debian(f[j])) { print f[j]; found = 1; exit }
    }
    END { if (!found) flush() }
  ' "${files[@]}" | head -n 1
}

if [[ -n "${DEBIAN_MIRROR:-}" ]]; then
  MIRROR="$DEBIAN_MIRROR"
else
  MIRROR="$(apt_debian_mirror "$APT_ETC")"
  if [[ -z "$MIRROR" ]]; then
    echo "local-base: no Debian mirror in $APT_ETC/sources.list.d/*.sources, $APT_ETC/sources.list or" \
      "$APT_ETC/sources.list.d/*.list (a 'deb' source whose URL path has a 'debian' component);" \
      "set DEBIAN_MIRROR to a Debian archive URL" >&2
    exit 1
  fi
fi
# The host's CA bundle goes into the image: it is what makes HTTPS to PyPI verify on this machine.
HOST_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt

force=0
case "${1:-}" in
  "") ;;
  --force) force=1 ;;
  --print-mirror) echo "$MIRROR"; exit 0 ;;
  *) usage ;;
esac
echo "local-base: Debian mirror $MIRROR" >&2

if [[ "$force" == 0 ]] && docker image inspect "$TAG" >/dev/null 2>&1; then
  echo "local-base: reusing existing image $TAG" >&2
  echo "$TAG"
  exit 0
fi

if ! command -v debootstrap >/dev/null; then
  echo "local-base: installing debootstrap" >&2
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >&2
fi

start=$SECONDS
rootfs="$(mktemp -d /var/tmp/ocelot-rootfs.XXXXXX)"
trap 'rm -rf "$rootfs"' EXIT

# minbase + Python is all the app needs; apt lists and .deb files are dropped to keep the layer small.
debootstrap --variant=minbase --include=python3,python3-venv bookworm "$rootfs" "$MIRROR" >&2
install -D -m 0644 "$HOST_CA_BUNDLE" "$rootfs/etc/ssl/certs/ca-certificates.crt"
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*

tar -C "$rootfs" -c . | docker import \
  --change 'ENV PATH=/opt/conda/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt PIP_CERT=/etc/ssl/certs/ca-certificates.crt' \
  --change 'CMD ["/bin/bash"]' \
  - "$ROOTFS_TAG" >&2
echo "local-base: rootfs imported after $((SECONDS - start)) s" >&2

# The Dockerfile comes from stdin, so the build has no context to send.
docker build --network host -t "$TAG" - >&2 <<DOCKERFILE
FROM $ROOTFS_TAG
RUN python3 -m venv /opt/conda \
 && /opt/conda/bin/pip install --no-cache-dir torch==$TORCH_VERSION \
 && python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
DOCKERFILE
# The child image keeps the layers; only the helper tag goes.
docker image rm "$ROOTFS_TAG" >/dev/null
echo "local-base: built $TAG in $((SECONDS - start)) s" >&2
echo "$TAG"
