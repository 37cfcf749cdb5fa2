#!/usr/bin/env bash
# Regenerates the picture gallery in docs/gallery/ with `python -m vision_jax.viz`.
#   experiments/gallery.sh             # trains the default shapes CNN for STEPS=1000 steps first
#   STEPS=300 experiments/gallery.sh   # quicker, but a weaker model (about 60% accuracy)
# The course-notes pictures take seconds; the checkpoint pictures need a trained model, so the
# script first trains configs/shapes_cnn.py in WORKDIR (1000 steps: 94% test accuracy, about
# 5 minutes on 2 CPU cores; rerunning reuses the finished run).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
OUT=${OUT:-docs/gallery}
STEPS=${STEPS:-1000}
WORKDIR=${WORKDIR:-runs/gallery_shapes_cnn_${STEPS}}
mkdir -p "$OUT"
viz() { "$PY" -m vision_jax.viz "$@"; }

viz pixels --out "$OUT/pixels.png"
viz convolution --out "$OUT/convolution.png"
viz filters --out "$OUT/filters.png"
viz max_pool --out "$OUT/max_pool.png"
viz x_vs_o --out "$OUT/x_vs_o.png"

"$PY" -m vision_jax.main --config=configs/shapes_cnn.py --workdir="$WORKDIR" \
  --config.train.num_steps="$STEPS" --config.train.progress_bar=False
viz layers --workdir "$WORKDIR"
viz first_layer --workdir "$WORKDIR" --out "$OUT/first_layer.png"
viz feature_maps --workdir "$WORKDIR" --layer conv1 --indices 1 --out "$OUT/feature_maps.png"
viz saliency --workdir "$WORKDIR" --indices 0,1,2,3,4,5 --out "$OUT/saliency.png"
viz gradcam --workdir "$WORKDIR" --indices 0,1,2,3,4,5 --out "$OUT/gradcam.png"
viz gradcam --workdir "$WORKDIR" --indices 0,1,2,3,4,5 --layer conv1/__call__ \
  --out "$OUT/gradcam_conv1.png"
ls -l "$OUT"
