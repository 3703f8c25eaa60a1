#!/usr/bin/env bash
# GPU checks and figures, run from the repository root on a CUDA machine:
#
#   bench/gpu.sh tests      # the GPU-marked tests (CUDA + AMP training, resume, inference, loader)
#   bench/gpu.sh step       # one training step, MedNeXt-M kernel 3 and 5, 128^3, batch 2, bf16:
#                           # ours (channels_last_3d and contiguous) vs MONAI's MedNeXt, equal math
#   bench/gpu.sh dwconv     # depthwise convolutions of MedNeXt-M (128^3, batch 2, bf16, k3 and k5),
#                           # forward + backward: the Triton kernels (nets/dwconv_triton.py) vs cuDNN,
#                           # one JSON line per shape (needs the triton extra: pip install .[triton])
#   bench/gpu.sh pipeline   # full-scale phantom: train.py step time with data loading (MedNeXt-M k3,
#                           # 128^3), 5 folds of MedNeXt-M k5, then infer.py with 8-flip TTA and the
#                           # 5-fold ensemble on a DUKE-like case (time per case vs the 5-minute budget)
#
# Several stages may be given at once. Work files go to $GPU_WORK (default /tmp/gpu_work); logs and
# the per-epoch CSVs to $GPU_OUT (default runs/gpu).
set -euo pipefail
PY=${PYTHON:-python3}
WORK=${GPU_WORK:-/tmp/gpu_work}
LOGS=${GPU_OUT:-runs/gpu}
CASES=${GPU_CASES:-8}
mkdir -p "$WORK" "$LOGS"
export PYTHONUNBUFFERED=1

for stage in "$@"; do
case $stage in
tests)
    $PY -m pytest -q -m gpu -p no:cacheprovider tests 2>&1 | tee "$LOGS/tests.log"
    ;;
step)
    for k in 3 5; do
        $PY bench/train_step.py --device cuda --amp --net mednext --size M --mednext-channels 32 \
            --mednext-patch 128 --batch 2 --kernel "$k" --repeats 10 2>&1 | tee "$LOGS/step_k$k.log"
    done
    ;;
dwconv)
    $PY bench/dwconv.py --kernels 3,5 --batch 2 --patch 128 --dtype bf16 2>&1 | tee "$LOGS/dwconv.log"
    ;;
pipeline)
    data=$WORK/phantom_full_n$CASES
    [ -d "$data/images" ] || $PY -m data.phantom --out "$data" --cases "$CASES" --scale full \
        --workers "$(nproc)" --no-progress
    common=(--data "$data" --runs-dir "$WORK/runs" --cache-dir "$WORK/cache" --size M
            --set patch_size=128,128,128 --workers 8 -q)
    t0=$(date +%s)
    $PY train.py --arch mednext --kernel 3 --run m3 --epochs 2 --iters 40 --val-iters 5 "${common[@]}"
    echo "MedNeXt-M k3 fold 0, 2x40 iterations incl. caching and validation: $(( $(date +%s) - t0 )) s"
    cp "$WORK/runs/m3/fold_0/log.csv" "$LOGS/train_m3_log.csv"
    cat "$LOGS/train_m3_log.csv"
    t0=$(date +%s)
    $PY train.py --arch mednext --kernel 5 --run m5 --fold all --epochs 1 --iters 8 --val-iters 0 "${common[@]}"
    echo "MedNeXt-M k5, 5 folds x 8 iterations: $(( $(date +%s) - t0 )) s"
    duke=$(ls "$data/images" | grep -m1 DUKE)
    rm -rf "$WORK/pred"
    $PY infer.py --ensemble --runs m5 --runs-dir "$WORK/runs" --data "$data" --split all --ids "$duke" \
        --output "$WORK/pred" --lcc -q
    $PY - "$WORK/pred/predictions_manifest.json" "$data/images/$duke" <<'EOF'
import json, sys, glob
import nibabel as nib
m = json.load(open(sys.argv[1]))
shape = nib.load(sorted(glob.glob(sys.argv[2] + "/*_0001.nii*"))[0]).shape
print(f"{m['cases']} {shape}: {m['seconds_per_case']} s per case, total {m['total_seconds']:.1f} s "
      f"(challenge budget 300 s per case); {len(m['checkpoints'])} checkpoints, settings {m['settings']}, "
      f"errors {m['errors']}")
EOF
    cp "$WORK/pred/predictions_manifest.json" "$LOGS/infer_manifest.json"
    ;;
*)
    echo "unknown stage $stage (tests, step, dwconv, pipeline)" >&2
    exit 2
    ;;
esac
done
