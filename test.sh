#!/usr/bin/env bash
# Run the image on test/input the way Grand-Challenge runs it, then validate the output inside the same image and,
# with trained weights, score it against the sample's exact annotations (test/sample-truth.json).
set -euo pipefail

usage() {
  cat >&2 <<USAGE
usage: $0 [--cpu] [--keep] [--model DIR] [IMAGE]
  IMAGE        image to test (env: IMAGE_TAG; default ocelot-algo:latest)
  --cpu        leave out --gpus even when a GPU is present (GC runs the same image on CPU-only instances too)
  --keep       keep the output folder and print its path
  --model DIR  mount DIR read-only at /opt/ml/model, where GC unpacks a separately uploaded model.tar.gz
USAGE
  exit 2
}

image="${IMAGE_TAG:-ocelot-algo:latest}"
use_gpu=1
keep=0
model_dir=""
while (($#)); do
  case "$1" in
    --cpu) use_gpu=0; shift ;;
    --keep) keep=1; shift ;;
    --model) (($# >= 2)) || usage
      [[ -d "$2" ]] || { echo "test.sh: --model $2: no such folder" >&2; exit 2; }
      model_dir="$(cd "$2" && pwd)"; shift 2 ;;
    -*) usage ;;
    *) image="$1"; shift ;;
  esac
done
cd "$(dirname "$0")"  # after the arguments: a relative --model is the caller's

input="$PWD/test/input"
[[ -f "$input/metadata.json" ]] || { echo "test.sh: $input/metadata.json is missing" >&2; exit 2; }
pairs="$(python3 -c 'import json, sys; print(len(json.load(open(sys.argv[1]))))' "$input/metadata.json")"

# Once trained weights ship, an output without any point is a failure, not just an empty prediction, and so is
# one that misses the sample's cells (the shipped ensemble scores mF1 0.96 on it).
weights_dir="${model_dir:-weights}"
truth="$PWD/test/sample-truth.json"
min_mf1=0.5
trained=0
require_points=()
if grep -Eq '"trained"[[:space:]]*:[[:space:]]*true' "$weights_dir/manifest.json" 2>/dev/null; then
  trained=1
  require_points=(--require-points)
fi

model_mount=()
[[ -z "$model_dir" ]] || model_mount=(--volume "$model_dir:/opt/ml/model:ro")

gpu=()
if ((use_gpu)) && command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then
  gpu=(--gpus all)
fi

run_id="ocelot-test-$$-$RANDOM"
tmp_volume="$run_id-tmp"
output_dir="$(mktemp -d)"
cleanup() {
  local status=$?
  ((status == 0)) || echo "test.sh: FAIL (exit $status)" >&2
  docker rm -f "$run_id" >/dev/null 2>&1 || true
  docker volume rm -f "$tmp_volume" >/dev/null 2>&1 || true
  if ((keep)); then echo "test.sh: output kept in $output_dir"; else rm -rf "$output_dir"; fi
}
trap cleanup EXIT

# GC: no network, read-only /input, empty writable /tmp, /output writable by the image's non-root user.
# The resource limits are those of the official OCELOT template's test.sh.
chmod 777 "$output_dir"
docker volume create "$tmp_volume" >/dev/null
echo "test.sh: running $image on $pairs pair(s)${gpu[*]:+ with GPU}"
start=$SECONDS
run_status=0
docker run --rm --name "$run_id" --platform=linux/amd64 --network none ${gpu[@]+"${gpu[@]}"} \
  --memory 4g --memory-swap 4g --cap-drop ALL --security-opt no-new-privileges --shm-size 128m --pids-limit 256 \
  --volume "$input:/input:ro" --volume "$output_dir:/output" --volume "$tmp_volume:/tmp" \
  ${model_mount[@]+"${model_mount[@]}"} "$image" || run_status=$?
echo "test.sh: algorithm run took $((SECONDS - start)) s (exit code $run_status)"
((run_status == 0)) || exit 1

# GC reads exactly one output file; anything else there means process.py wrote stray files.
produced="$(ls -A "$output_dir")"
if [[ "$produced" != "cell_classification.json" ]]; then
  echo "test.sh: expected only cell_classification.json in /output, found: ${produced:-nothing}" >&2
  exit 1
fi

docker run --rm --name "$run_id" --platform=linux/amd64 --network none --entrypoint python \
  --volume "$output_dir:/output:ro" "$image" \
  -m ocelot_algo validate /output/cell_classification.json --pairs "$pairs" ${require_points[@]+"${require_points[@]}"}

if ((trained)); then
  score="$(docker run --rm --name "$run_id" --platform=linux/amd64 --network none --entrypoint python \
    --volume "$output_dir:/output:ro" --volume "$truth:/truth.json:ro" "$image" \
    -m ocelot_algo evaluate --pred /output/cell_classification.json --gt /truth.json --bootstrap 0)"
  echo "$score"
  mf1="$(sed -n 's/.*: mF1 \([0-9.]*\) .*/\1/p' <<<"$score")"
  python3 -c 'import sys; sys.exit(float(sys.argv[1]) < float(sys.argv[2]))' "${mf1:-0}" "$min_mf1" || {
    echo "test.sh: mF1 ${mf1:-?} on the sample is below $min_mf1: the trained weights do not find its cells" >&2
    exit 1
  }
fi
echo "test.sh: PASS ($image, $pairs pair(s))"
