"""Training throughput against the number of devices (weak scaling: fixed batch per device).

    python experiments/scaling.py                          # 1, 2, 4, 8 CPU devices, ResNet-20
    python experiments/scaling.py --model=resnet50 --image_size=224 --platform=gpu --devices=1,8
    python experiments/scaling.py --strategy=pmap --json=/tmp/scaling.json

Each device count runs in a fresh process (XLA fixes the CPU device count at start-up), trains
on random data already on the devices with the project's compiled train step, and times
`--steps` steps after `--warmup` steps. It prints a Markdown table; `--json` also writes the rows.
On CPU, the "devices" are XLA's fake host devices sharing this machine's cores: the table then
shows the cost of the collectives, not more compute.
"""

import argparse
import json
import os
import subprocess
import sys
import time


def _worker(args) -> dict:
  """Runs in the child process: builds the state, times the train step."""
  import jax
  import numpy as np
  import optax

  from vision_jax import models, tasks
  from vision_jax.train import steps
  from vision_jax import sharding
  from vision_jax.train.state import create_train_state

  mesh = sharding.make_mesh()
  model = models.get_model(args.model, num_classes=10, dtype=args.dtype)
  if args.strategy == "pmap" and hasattr(model, "bn_axis_name"):
    model = model.clone(bn_axis_name=sharding.PMAP_AXIS)
  shape = (args.image_size, args.image_size, 3)
  state = create_train_state(model, optax.sgd(0.1, momentum=0.9), jax.random.key(0), shape,
                             mesh, use_ema=False)
  compiled = steps.compile_steps(mesh, state, tasks.ClassificationTask(),
                                 strategy=args.strategy)
  train_state = compiled.to_train_layout(state)
  batch_size = args.per_device_batch * jax.device_count()
  rng = np.random.default_rng(0)
  batch = {"image": rng.normal(size=(batch_size, *shape)).astype(np.float32),
           "label": rng.integers(0, 10, size=batch_size)}
  for _ in range(args.warmup):  # Compiles, then settles.
    train_state, metrics = compiled.train(train_state, batch)
  jax.block_until_ready(metrics)
  start = time.perf_counter()
  for _ in range(args.steps):
    train_state, metrics = compiled.train(train_state, batch)
  jax.block_until_ready(metrics)
  seconds = (time.perf_counter() - start) / args.steps
  return {"devices": jax.device_count(), "platform": jax.devices()[0].platform,
          "device_kind": jax.devices()[0].device_kind, "model": args.model,
          "strategy": args.strategy, "global_batch": batch_size,
          "step_ms": 1000 * seconds, "images_per_sec": batch_size / seconds}


def _run_child(args, devices: int) -> dict:
  env = dict(os.environ)
  if args.platform == "cpu":
    env["JAX_PLATFORMS"] = "cpu"
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  else:  # The first `devices` accelerators.
    env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in range(devices))
  command = [sys.executable, __file__, "--worker", *sys.argv[1:]]
  out = subprocess.run(command, env=env, check=True, capture_output=True, text=True).stdout
  return json.loads(out.strip().splitlines()[-1])


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--devices", default="1,2,4,8", help="Comma-separated device counts.")
  parser.add_argument("--model", default="resnet20")
  parser.add_argument("--image_size", type=int, default=32)
  parser.add_argument("--per_device_batch", type=int, default=32)
  parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  parser.add_argument("--strategy", default="jit", choices=["jit", "pmap"])
  parser.add_argument("--platform", default="cpu", choices=["cpu", "gpu", "tpu"])
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--warmup", type=int, default=3)
  parser.add_argument("--json", default=None, help="Also write the rows here.")
  parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.worker:
    print(json.dumps(_worker(args)))
    return

  rows = [_run_child(args, int(n)) for n in args.devices.split(",")]
  base = rows[0]["images_per_sec"] / rows[0]["devices"]
  print(f"{args.model}, {args.image_size}x{args.image_size}, {args.per_device_batch} images per "
        f"device, {args.dtype}, strategy {args.strategy}, {rows[0]['device_kind']}\n")
  print("| devices | global batch | step (ms) | images/s | images/s per device | efficiency |")
  print("|---:|---:|---:|---:|---:|---:|")
  for r in rows:
    per_device = r["images_per_sec"] / r["devices"]
    print(f"| {r['devices']} | {r['global_batch']} | {r['step_ms']:.1f} | "
          f"{r['images_per_sec']:.0f} | {per_device:.0f} | {per_device / base:.0%} |")
  if args.json:
    with open(args.json, "w") as f:
      json.dump(rows, f, indent=2)


if __name__ == "__main__":
  main()
