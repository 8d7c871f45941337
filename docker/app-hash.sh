#!/usr/bin/env bash
# One hash of everything the Dockerfile copies into the image (the .dockerignore allow-list, plus the Dockerfile):
# build.sh stamps it on the image as a label and export.sh compares it, so an image older than the code or the
# weights beside it is never exported.
set -euo pipefail
cd "$(dirname "$0")/.."
find Dockerfile requirements.txt process.py ocelot_algo weights -type f \
    ! -path '*/__pycache__/*' ! -name '*.pyc' ! -path 'weights/report*' -print0 \
  | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -d' ' -f1
