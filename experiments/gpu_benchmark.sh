#!/usr/bin/env bash
# The whole GPU comparison with PyTorch in one command, on a fresh GPU machine that has jax
# (CUDA), flax, optax, orbax, torch and torchvision but no internet.
#
#   bash experiments/gpu_benchmark.sh prepare   # here, with internet: wheels + data (~40 MB)
#   bash experiments/gpu_benchmark.sh run       # there: prints the tables, writes JSON to $OUT
#
# `prepare` downloads the wheels the GPU image lacks (ml-collections, tensorflow-datasets, grain,
# array-record and what they need) into .whl/ for CPython $PY_VERSION, prepares Fashion-MNIST
# as array_record files into .gpu_data/ (from Debian's dataset-fashion-mnist; no TensorFlow is
# needed to train from them), and copies ../shared/bench/torch_resnet50.py into .gpu_data/.
# Carry .whl and .gpu_data to the GPU machine (both are in .git/info/exclude after prepare).
#
# `run`:
#   1. ResNet-50, bf16, global batch $BATCH, 224x224, synthetic data on the GPU: vision_jax's
#      compiled train step and inference vs torchvision's ResNet-50 eager and torch.compile
#      (experiments/benchmark.py; same optimiser, same timing), and the shared reference script
#      ../shared/bench/torch_resnet50.py as given.
#   2. Fashion-MNIST to accuracy on one GPU (configs/$FMNIST_CONFIG): wall time of training
#      and the final test accuracy, from metrics.jsonl.
# Everything lands in $OUT (default /tmp/vision_jax_gpu_benchmark): *.md tables, *.json.
# TINY=1 runs the same steps at toy sizes (a check of the script on any machine, e.g. a CPU).
set -euo pipefail
cd "$(dirname "$0")/.."

MODE=${1:-run}
PY_VERSION=${PY_VERSION:-3.12}
BATCH=${BATCH:-256}
STEPS=${STEPS:-30}
PEAK_TFLOPS=${PEAK_TFLOPS:-989}  # H100/H200 SXM dense bf16 (the data sheet's figure).
FMNIST_CONFIG=${FMNIST_CONFIG:-fashion_mnist_resnet.py}
OUT=${OUT:-/tmp/vision_jax_gpu_benchmark}
BENCH_FLAGS=(--model=resnet50 --batch_size="$BATCH" --image_size=224 --num_classes=1000
             --dtype=bfloat16 --steps="$STEPS" --peak_tflops="$PEAK_TFLOPS")
TRAIN_FLAGS=()
if [ "${TINY:-0}" = 1 ]; then
  BENCH_FLAGS=(--model=simple_cnn --tiny --skip_torch_compile)
  TRAIN_FLAGS=(--config.train.num_steps=2 --config.input.batch_size=8 --config.train.eval_every=2)
fi
WHEELS=(ml-collections==1.1.0 tensorflow-datasets==4.9.10 grain==0.2.18 array-record==0.8.6
        importlib-resources==7.1.0 dm-tree simple-parsing docstring-parser immutabledict
        tensorflow-metadata googleapis-common-protos termcolor toml portpicker)
SDISTS=(promise)  # Pure Python, published as a source archive only: built into a wheel here.

prepare() {
  for path in /.whl/ /.gpu_data/; do
    grep -qxF "$path" .git/info/exclude 2>/dev/null || echo "$path" >> .git/info/exclude
  done
  rm -rf .whl && mkdir -p .whl .gpu_data
  for wheel in "${WHEELS[@]}"; do
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PY_VERSION" \
      --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any \
      -d .whl "$wheel" 2>&1 | grep -v "^WARNING: Location" || true
  done
  for sdist in "${SDISTS[@]}"; do
    python3 -m pip wheel -q --no-deps -w .whl "$sdist" 2>&1 | grep -v "^WARNING: Location" || true
  done
  .venv/bin/python -m vision_jax.data.prepare fashion_mnist_local --data_dir=.gpu_data/tfds
  cp ../shared/bench/torch_resnet50.py .gpu_data/
  du -sh .whl .gpu_data
}

run() {
  mkdir -p "$OUT"
  if [ -d .whl ] && [ "${TINY:-0}" != 1 ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/vision_jax_site .whl/*.whl
    export PYTHONPATH=/tmp/vision_jax_site:$PWD
  else
    export PYTHONPATH=$PWD
  fi
  export PYTHONUNBUFFERED=1
  python3 -c 'import jax; print("devices:", jax.devices())'
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true

  echo "== 1. ResNet-50, bf16, batch $BATCH, synthetic data on the GPU"
  python3 experiments/benchmark.py "${BENCH_FLAGS[@]}" --json_out="$OUT/resnet50.json" \
    | tee "$OUT/resnet50.md"
  if [ -f .gpu_data/torch_resnet50.py ] && [ "${TINY:-0}" != 1 ]; then
    echo "== the shared PyTorch reference, as given"
    B=$BATCH STEPS=$STEPS python3 .gpu_data/torch_resnet50.py | tee "$OUT/torch_reference.json"
  fi

  echo "== 2. Fashion-MNIST to accuracy (configs/$FMNIST_CONFIG)"
  rm -rf "$OUT/fashion_mnist"
  start=$(date +%s)
  python3 -m vision_jax.main --config="configs/$FMNIST_CONFIG" --workdir="$OUT/fashion_mnist" \
    --config.dataset.data_dir="$PWD/.gpu_data/tfds" --config.dataset.prepare=False \
    --config.train.progress_bar=False --config.train.compilation_cache= "${TRAIN_FLAGS[@]}"
  end=$(date +%s)
  python3 - "$OUT" "$((end - start))" "$FMNIST_CONFIG" <<'EOF'
import json, sys
out, wall, config = sys.argv[1], int(sys.argv[2]), sys.argv[3]
records = [json.loads(line) for line in open(f"{out}/fashion_mnist/metrics.jsonl")]
evals = [r for r in records if r["split"] == "eval"]
result = {"config": config, "wall_s": wall, "steps": evals[-1]["step"],
          "test_accuracy": evals[-1]["accuracy"],
          "best_test_accuracy": max(r["accuracy"] for r in evals)}
json.dump(result, open(f"{out}/fashion_mnist.json", "w"))
print(f"| configs/{config} | {result['test_accuracy']:.4f} | {wall} s wall (start-up and "
      f"compilation included) | {result['steps']} steps |")
EOF
  ls -l "$OUT"
}

case "$MODE" in
  prepare) prepare ;;
  run) run ;;
  *) echo "usage: bash experiments/gpu_benchmark.sh [prepare|run]" >&2; exit 2 ;;
esac
