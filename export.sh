#!/usr/bin/env bash
# Write the two uploads Grand-Challenge takes into dist/: the image tarball and the model-weights tarball.
set -euo pipefail
cd "$(dirname "$0")"

usage() { echo "usage: $0 [IMAGE]   (env: IMAGE_TAG; default ocelot-algo:latest)" >&2; exit 2; }
(($# <= 1)) || usage
[[ "${1:-}" != -* ]] || usage
image="${1:-${IMAGE_TAG:-ocelot-algo:latest}}"
docker image inspect "$image" >/dev/null 2>&1 || { echo "export.sh: no image $image; run ./build.sh first" >&2; exit 1; }

mkdir -p dist
name="${image%%:*}"
image_tar="dist/${name##*/}_$(date -u +%Y%m%d-%H%M%S).tar.gz"
model_tar="dist/model.tar.gz"

# Write to .partial names and rename, so an interrupted export never leaves a truncated tarball behind.
trap 'rm -f "$image_tar.partial" "$model_tar.partial"' EXIT
# pigz writes the same gzip format using every core; plain gzip took 11 min for a 7.8 GB image on 2 busy cores.
compress=(gzip -c)
if command -v pigz >/dev/null; then compress=(pigz -c); fi
docker save "$image" | "${compress[@]}" > "$image_tar.partial"
mv "$image_tar.partial" "$image_tar"
# The trailing "." keeps paths relative: GC extracts the tarball as-is into /opt/ml/model/. The evaluation
# reports stay out, as they stay out of the image (.dockerignore): the same files as the image's weights.
tar -czf "$model_tar.partial" -C weights --exclude='./report*' .
mv "$model_tar.partial" "$model_tar"

ls -lh "$image_tar" "$model_tar"
cat <<NEXT
Upload to Grand-Challenge:
  $image_tar  -> your algorithm > Containers > Upload a container (activation takes ~20 min)
  $model_tar  -> your algorithm > Models (extracted to /opt/ml/model/ at run time; optional, the image
                 already contains the same weights under /opt/app/weights/)
Then select the T4 GPU in the algorithm settings and check the logs of a "Try-out Algorithm" run.
NEXT
