#!/usr/bin/env bash
# The checks that need a GPU, in one call of a few minutes: CPU-GPU parity of the points on synthetic pairs, then
# `bench` with the default configuration on 136 pairs (a Grand-Challenge phase's size). Prints one JSON line.
#
#   test/gpu-check.sh [--weights DIR] [--members N]   on a machine with an NVIDIA GPU; exit 3 when there is none
#   test/gpu-check.sh --stage DIR                     here: put what a bare GPU machine lacks into DIR (the
#                                                     wheels of smp and its pure-Python needs, and two members)
#
# A bare machine with torch but without this project's other packages installs the wheels of `.gpu/wheels` (made
# by --stage) into a temporary folder first; nothing is downloaded. Parity: the GPU runs fp16 autocast and the CPU
# float32, so the points may differ at the margin: at least 98% of the CPU's points must have a GPU point of the same
# class within 3 px, the counts may differ by at most 2%, and matched probabilities by at most 0.05.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
python="${PYTHON:-python3}"
weights="" members=2

if [[ "${1:-}" == "--stage" ]]; then
  (($# == 2)) || { echo "usage: $0 --stage DIR" >&2; exit 2; }
  stage="$2"
  mkdir -p "$stage/wheels" "$stage/weights"
  # smp, and its needs that a GPU image may lack, as wheels for any x86-64 Linux Python 3
  pip_line() { grep -E "^$1==" requirements.txt | cut -d' ' -f1; }
  "$python" -m pip download --quiet --no-deps --only-binary=:all: -d "$stage/wheels" \
    "$(pip_line segmentation-models-pytorch)" "$(pip_line timm)" "$(pip_line tifffile)"
  "$python" - "$stage/weights" <<'PY'
import json, shutil, sys
from pathlib import Path
out, bundled = Path(sys.argv[1]), Path("weights")
manifest = json.loads((bundled / "manifest.json").read_text())
names = manifest["members"][:2]  # fold0 (joint) and fold0-none (cell-only): both kinds of member
for name in names:
    for suffix in (".json", ".safetensors"):
        shutil.copy(bundled / f"{name}{suffix}", out / f"{name}{suffix}")
manifest.update(members=names, sha256={n: manifest["sha256"][n] for n in names})
(out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
PY
  echo "staged $(du -sh "$stage" | cut -f1) in $stage: carry it, and run: test/gpu-check.sh --weights $stage/weights"
  exit 0
fi

while (($#)); do
  case "$1" in
    --weights) weights="$2"; shift 2 ;;
    --members) members="$2"; shift 2 ;;
    *) echo "usage: $0 [--weights DIR] [--members N] | --stage DIR" >&2; exit 2 ;;
  esac
done

if ! "$python" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  echo "gpu-check: no CUDA GPU visible to $python's torch; nothing was run (run it on a machine with an NVIDIA GPU)"
  exit 3
fi

if ! "$python" -c 'import segmentation_models_pytorch, tifffile, scipy, safetensors' 2>/dev/null; then
  wheels="$root/${GPU_WHEELS:-.gpu/wheels}"
  if ! compgen -G "$wheels/*.whl" >/dev/null; then
    echo "gpu-check: $python lacks this project's packages and $wheels holds no wheels: make them with --stage" >&2
    exit 2
  fi
  site="$(mktemp -d)"
  "$python" -m pip install --quiet --no-index --no-deps --target "$site" "$wheels"/*.whl
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
"$python" -m ocelot_algo make-sample --out "$work/input" --pairs 4 --seed 3 >/dev/null
weight_args=(${weights:+--weights "$weights"} --members "$members" --quiet)
"$python" -m ocelot_algo predict --input "$work/input" --output "$work/cpu" --device cpu "${weight_args[@]}" >/dev/null
"$python" -m ocelot_algo predict --input "$work/input" --output "$work/gpu" --device cuda "${weight_args[@]}" >/dev/null
"$python" -m ocelot_algo bench --pairs 136 --device cuda ${weights:+--weights "$weights"} --json "$work/bench.json" >/dev/null
"$python" - "$work" <<'PY'
import json, sys
from pathlib import Path
import numpy as np
work = Path(sys.argv[1])
def points(name):
    doc = json.loads((work / name / "cell_classification.json").read_text())
    return [(p["name"], *p["point"], p["probability"]) for p in doc["points"]]
cpu, gpu = points("cpu"), points("gpu")
matched, prob_gaps = 0, []
for name, x, y, cls, prob in cpu:
    near = [(abs(gx - x) + abs(gy - y), gp) for gn, gx, gy, gc, gp in gpu
            if gn == name and gc == cls and max(abs(gx - x), abs(gy - y)) <= 3]
    if near:
        matched += 1
        prob_gaps.append(abs(min(near)[1] - prob))
share = matched / max(len(cpu), 1)
count_gap = abs(len(gpu) - len(cpu)) / max(len(cpu), 1)
worst = max(prob_gaps, default=0.0)
parity = {"cpu_points": len(cpu), "gpu_points": len(gpu), "matched_share": round(share, 4),
          "count_gap": round(count_gap, 4), "max_probability_gap": round(worst, 4),
          "passed": bool(share >= 0.98 and count_gap <= 0.02 and worst <= 0.05)}
bench = json.loads((work / "bench.json").read_text())
bench.pop("per_pair_s", None)
print(json.dumps({"parity": parity, "bench_136_pairs": bench}))
sys.exit(0 if parity["passed"] else 1)
PY
