#!/usr/bin/env bash
# Trains on real Fashion-MNIST and prints the final test accuracy.
#   experiments/fashion_mnist.sh                        # simple CNN, CPU-sized (configs/fashion_mnist_cnn.py)
#   CONFIG=configs/fashion_mnist_resnet.py experiments/fashion_mnist.sh   # ResNet-20, for a GPU
# Extra arguments go to vision_jax.main, e.g. --config.train.num_epochs=5.
set -euo pipefail
cd "$(dirname "$0")/.."
CONFIG=${CONFIG:-configs/fashion_mnist_cnn.py}
WORKDIR=${WORKDIR:-runs/$(basename "$CONFIG" .py)}
PY=${PY:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
start=$(date +%s)
"$PY" -m vision_jax.main --config="$CONFIG" --workdir="$WORKDIR" "$@"
echo "wall time: $(( $(date +%s) - start )) s ($(nproc) CPU cores; $(uname -m))"
"$PY" - "$WORKDIR/metrics.jsonl" <<'PYEOF'
import json, sys
last = [json.loads(l) for l in open(sys.argv[1]) if '"eval"' in l][-1]
print(f"step {last['step']}: test accuracy {last['accuracy']:.4f}, top-5 {last['top5_accuracy']:.4f}, "
      f"loss {last['loss']:.4f} on {int(last['num_examples'])} images")
PYEOF
