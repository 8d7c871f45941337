#!/usr/bin/env bash
# Build the algorithm image for Grand-Challenge (linux/amd64).
set -euo pipefail
cd "$(dirname "$0")"

usage() {
  cat >&2 <<USAGE
usage: $0 [--base IMAGE | --local-base] [--tag TAG]
  --base IMAGE   base image instead of the Dockerfile's pinned pytorch/pytorch (env: BASE_IMAGE)
  --local-base   build and use the local stand-in base (docker/local-base.sh), for machines without Docker Hub
  --tag TAG      image tag (env: IMAGE_TAG; default ocelot-algo:latest)
USAGE
  exit 2
}

base="${BASE_IMAGE:-}"
tag="${IMAGE_TAG:-ocelot-algo:latest}"
local_base=0
while (($#)); do
  case "$1" in
    --base) (($# >= 2)) || usage; base="$2"; shift 2 ;;
    --local-base) local_base=1; shift ;;
    --tag) (($# >= 2)) || usage; tag="$2"; shift 2 ;;
    *) usage ;;
  esac
done

# What the Dockerfile copies must exist and, since COPY keeps file modes and the image runs as a non-root user,
# be world-readable: a file only root can read would make the algorithm fail at run time.
app_files=(requirements.txt process.py ocelot_algo weights)
for path in "${app_files[@]}"; do
  [[ -e "$path" ]] || { echo "build.sh: $path is missing" >&2; exit 1; }
done
unreadable="$(find "${app_files[@]}" ! -perm -o=r -print -quit)"
if [[ -n "$unreadable" ]]; then
  echo "build.sh: $unreadable is not world-readable (fix with: chmod -R a+rX ${app_files[*]})" >&2
  exit 1
fi

if ((local_base)); then
  [[ -z "$base" ]] || { echo "build.sh: --local-base and --base/BASE_IMAGE exclude each other" >&2; exit 2; }
  base="$(docker/local-base.sh)"
fi

# The content hash of what goes in: export.sh refuses an image whose code or weights are not this folder's.
args=(--platform=linux/amd64 --network host --tag "$tag" --label "ocelot-algo.content-sha256=$(docker/app-hash.sh)")
[[ -z "$base" ]] || args+=(--build-arg "BASE_IMAGE=$base")

start=$SECONDS
docker build "${args[@]}" .
echo "build.sh: built $tag${base:+ on $base} in $((SECONDS - start)) s"
docker image ls "$tag"
