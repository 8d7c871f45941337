#!/usr/bin/env bash
# Write the two uploads Grand-Challenge takes into dist/: the image tarball and the model-weights tarball.
set -euo pipefail
cd "$(dirname "$0")"

usage() {
  cat >&2 <<USAGE
usage: $0 [--model-only] [IMAGE]
  IMAGE         image to export (env: IMAGE_TAG; default ocelot-algo:latest); it must be built from this folder
  --model-only  write only dist/model.tar.gz (no Docker needed)
USAGE
  exit 2
}
model_only=0
image="${IMAGE_TAG:-ocelot-algo:latest}"
while (($#)); do
  case "$1" in
    --model-only) model_only=1; shift ;;
    -*) usage ;;
    *) image="$1"; shift ;;
  esac
done

mkdir -p dist
name="${image%%:*}"
image_tar="dist/${name##*/}_$(date -u +%Y%m%d-%H%M%S).tar.gz"
model_tar="dist/model.tar.gz"
# Write to .partial names and rename, so an interrupted export never leaves a truncated tarball behind.
trap 'rm -f "$image_tar.partial" "$model_tar.partial"' EXIT

if ((!model_only)); then
  docker info >/dev/null 2>&1 || { echo "export.sh: the Docker daemon is not reachable (is docker installed and running?)" >&2; exit 1; }
  docker image inspect "$image" >/dev/null 2>&1 || { echo "export.sh: no image $image; run ./build.sh first" >&2; exit 1; }
  built="$(docker image inspect -f '{{ index .Config.Labels "ocelot-algo.content-sha256" }}' "$image")"
  here="$(docker/app-hash.sh)"
  if [[ "$built" != "$here" ]]; then
    echo "export.sh: $image was not built from this folder's code and weights (content ${built:-unlabelled}, here $here); run ./build.sh first" >&2
    exit 1
  fi
  # pigz writes the same gzip format using every core; plain gzip took 11 min for a 7.8 GB image on 2 busy cores.
  compress=(gzip -c)
  if command -v pigz >/dev/null; then compress=(pigz -c); fi
  docker save "$image" | "${compress[@]}" > "$image_tar.partial"
  mv "$image_tar.partial" "$image_tar"
fi
# The trailing "." keeps paths relative: GC extracts the tarball as-is into /opt/ml/model/. The evaluation
# reports stay out, as they stay out of the image (.dockerignore): the same files as the image's weights.
tar -czf "$model_tar.partial" -C weights --exclude='./report*' .
mv "$model_tar.partial" "$model_tar"

if ((model_only)); then ls -lh "$model_tar"; exit 0; fi
ls -lh "$image_tar" "$model_tar"
cat <<NEXT
Upload to Grand-Challenge:
  $image_tar  -> your algorithm > Containers > Upload a container (activation takes ~20 min)
  $model_tar  -> your algorithm > Models (extracted to /opt/ml/model/ at run time; optional, the image
                 already contains the same weights under /opt/app/weights/)
Then select the T4 GPU in the algorithm settings and check the logs of a "Try-out Algorithm" run.
NEXT
