"""Throughput side by side with PyTorch: one model, batch, size, dtype and strategy, one command.

    python experiments/benchmark.py --model=resnet20 --batch_size=128 --image_size=32 \
        --json_out=/tmp/bench.json                          # the README's CPU table
    python experiments/benchmark.py --model=resnet50 --batch_size=256 --image_size=224 \
        --num_classes=1000 --dtype=bfloat16 --peak_tflops=989   # an H100/H200 (dense bf16)
    python experiments/benchmark.py --model=simple_cnn --tiny --skip_torch_compile  # CI

Random data already on the devices. vision_jax: the project's compiled train step
(`steps.compile_steps`, `--strategy` jit or pmap over every device JAX sees) and a jitted
inference forward (`train=False`). PyTorch (`benchmark_torch.py`): torchvision's model, or an
equivalent network, eager and `torch.compile`, channels_last, on as many threads as JAX's CPU
has cores. Both use SGD with Nesterov momentum and weight decay 5e-5, as
`../shared/bench/torch_resnet50.py` does, and time alike: `--warmup` calls, the first one
reported as "compile s" (it compiles under jit and torch.compile; under eager it is just the
first step), then `--steps` calls between two device syncs.

Columns: train and inference images/s, mean train step (ms), first train call (s), peak device
memory (MB; empty where the framework reports none, e.g. on CPU) and model FLOP utilisation
(empty without `--peak_tflops`). Model FLOPs are XLA's cost analysis of the compiled train step
on the global batch (a multiply-add counts as 2), used for both frameworks' rows. XLA's
persistent compilation cache is switched off so that compile times are real. Prints a Markdown
table; `--json_out` also writes it as JSON.
"""

import argparse
import functools
import json
import os
import platform
import sys
import time

import jax
import numpy as np
import optax

from vision_jax import errors, models, sharding, tasks
from vision_jax.models import precision
from vision_jax.train import steps
from vision_jax.train.state import create_train_state

WEIGHT_DECAY = 5e-5  # As ../shared/bench/torch_resnet50.py.
COLUMNS = (  # (header, JSON key, format); None prints as an empty cell.
    ("framework", "framework", "{}"), ("mode", "mode", "{}"),
    ("train img/s", "train_images_per_sec", "{:.1f}"),
    ("infer img/s", "infer_images_per_sec", "{:.1f}"), ("step ms", "step_ms", "{:.2f}"),
    ("compile s", "compile_s", "{:.2f}"), ("peak MB", "peak_mb", "{:.0f}"),
    ("MFU %", "mfu_percent", "{:.1f}"))
_TINY = {"batch_size": 8, "steps": 2, "warmup": 1}
_FULL = {"batch_size": 128, "steps": 30, "warmup": 8}  # warmup as torch_resnet50.py's WARM.


def optimizer() -> optax.GradientTransformation:
  """torch.optim.SGD(lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-5)."""
  return optax.chain(optax.add_decayed_weights(WEIGHT_DECAY),
                     optax.sgd(0.1, momentum=0.9, nesterov=True))


def _timed(call, warmup: int, num_steps: int) -> tuple[float, float]:
  """(seconds of the first call, seconds per call after `warmup` calls); `call` returns arrays."""
  start = time.perf_counter()
  jax.block_until_ready(call())
  first = time.perf_counter() - start
  for _ in range(warmup - 1):
    jax.block_until_ready(call())  # Each warmup call on its own: steady state, no backlog.
  start = time.perf_counter()
  for _ in range(num_steps):
    out = call()
  jax.block_until_ready(out)
  return first, (time.perf_counter() - start) / num_steps


def _peak_mb() -> float | None:
  """Largest peak memory of the local devices, or None where JAX reports none (CPU)."""
  stats = [d.memory_stats() for d in jax.local_devices()]
  peaks = [s["peak_bytes_in_use"] for s in stats if s and "peak_bytes_in_use" in s]
  return max(peaks) / 2**20 if peaks else None


def _abstract(tree):
  """Shapes and dtypes without shardings: lowered for one device, on the global batch."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)


def _train_flops(abstract_state, abstract_batch: dict, task: tasks.Task) -> float | None:
  """XLA's FLOP count of one train step on the global batch (an untimed compile)."""
  step = jax.jit(functools.partial(steps.train_step, task=task, ema_decay=0.0))
  cost = step.lower(abstract_state, abstract_batch).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost["flops"]) if cost and cost.get("flops") else None


def measure_jax(args) -> tuple[dict, float | None]:
  """The vision_jax row, and the model FLOPs of one train step."""
  mesh = sharding.make_mesh()
  plain = models.get_model(args.model, num_classes=args.num_classes,
                           **precision.dtypes(args.dtype))
  model = plain
  if args.strategy == "pmap" and hasattr(model, "bn_axis_name"):
    model = model.clone(bn_axis_name=sharding.PMAP_AXIS)
  shape = (args.image_size, args.image_size, args.channels)
  task = tasks.ClassificationTask()
  state = create_train_state(model, optimizer(), jax.random.key(0), shape, mesh, use_ema=False)
  rng = np.random.default_rng(0)
  batch = {"image": rng.normal(size=(args.batch_size, *shape)).astype(np.float32),
           "label": rng.integers(0, args.num_classes, size=args.batch_size).astype(np.int32)}
  # For the FLOP count after the timed compile; BatchNorm without pmap's axis (same maths).
  abstract = _abstract((state.replace(apply_fn=plain.apply), batch))
  batch = jax.device_put(batch, sharding.data_sharding(mesh))  # On the devices, once.

  compiled = steps.compile_steps(mesh, state, task, strategy=args.strategy)
  train_state = compiled.to_train_layout(state)

  def train():
    nonlocal train_state
    train_state, metrics = compiled.train(train_state, batch)
    return metrics

  compile_s, step_s = _timed(train, args.warmup, args.steps)
  final = compiled.to_global(train_state)
  variables = {"params": final.params, "batch_stats": final.batch_stats}
  forward = jax.jit(lambda v, x: model.apply(v, x, train=False)[0])
  infer_compile_s, infer_s = _timed(lambda: forward(variables, batch["image"]),
                                    args.warmup, args.steps)
  flops = _train_flops(*abstract, task)
  row = {"framework": "vision_jax", "mode": args.strategy,
         "train_images_per_sec": args.batch_size / step_s,
         "infer_images_per_sec": args.batch_size / infer_s, "step_ms": 1000 * step_s,
         "compile_s": compile_s, "infer_compile_s": infer_compile_s, "peak_mb": _peak_mb()}
  return row, flops


def measure_torch(args, compiled: bool) -> dict | None:
  """A PyTorch row (None: no PyTorch twin of the model)."""
  import torch  # pylint: disable=g-import-not-at-top  (test extra; only this command needs it)
  import benchmark_torch  # pylint: disable=g-import-not-at-top  (next to this file)
  torch.set_num_threads(_threads())
  device = "cuda" if jax.devices()[0].platform == "gpu" and torch.cuda.is_available() else "cpu"
  return benchmark_torch.measure(
      args.model, batch_size=args.batch_size, image_size=args.image_size,
      channels=args.channels, num_classes=args.num_classes, dtype=args.dtype,
      compiled=compiled, warmup=args.warmup, steps=args.steps, device=device)


def _threads() -> int:
  """CPU cores this process may use: XLA's CPU thread pool takes as many."""
  return len(os.sched_getaffinity(0))


def _machine() -> dict:
  cpu = platform.processor()
  if os.path.exists("/proc/cpuinfo"):
    names = [line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
             if line.startswith("model name")]
    cpu = names[0] if names else cpu
  device = jax.devices()[0]
  return {"platform": device.platform, "device_kind": device.device_kind,
          "devices": jax.device_count(), "cpu": cpu, "threads": _threads(),
          "jax": jax.__version__}


def table(result: dict) -> str:
  """The Markdown table of `result["rows"]` (and a header line naming the run)."""
  c, m = result["config"], result["machine"]
  lines = [f"{c['model']}, batch {c['batch_size']}, {c['image_size']}x{c['image_size']}x"
           f"{c['channels']}, {c['dtype']}, {c['steps']} steps after {c['warmup']} warmup; "
           f"{m['devices']} x {m['device_kind']} ({m['platform']}), {m['cpu']}, "
           f"{m['threads']} threads", "",
           "| " + " | ".join(h for h, _, _ in COLUMNS) + " |",
           "|---|---|" + "---:|" * (len(COLUMNS) - 2)]
  for row in result["rows"]:
    cells = ["" if row.get(key) is None else form.format(row[key]) for _, key, form in COLUMNS]
    lines.append("| " + " | ".join(cells) + " |")
  if result["notes"]:
    lines += [""] + [f"- {note}" for note in result["notes"]]
  return "\n".join(lines)


def _parse(argv: list[str]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
      prog="benchmark.py", description=__doc__.split("\n")[0])
  parser.add_argument("--model", default="resnet20", help="A registry model name.")
  parser.add_argument("--batch_size", type=int, default=None, help="Global batch (128).")
  parser.add_argument("--image_size", type=int, default=32)
  parser.add_argument("--channels", type=int, default=3)
  parser.add_argument("--num_classes", type=int, default=10)
  parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  parser.add_argument("--strategy", default="jit", choices=["jit", "pmap"])
  parser.add_argument("--steps", type=int, default=None, help="Timed calls (30).")
  parser.add_argument("--warmup", type=int, default=None, help="Calls before timing (8).")
  parser.add_argument("--peak_tflops", type=float, default=None,
                      help="One device's peak TFLOP/s in --dtype, for MFU (times the devices).")
  parser.add_argument("--skip_torch", action="store_true", help="No PyTorch rows.")
  parser.add_argument("--skip_torch_compile", action="store_true",
                      help="PyTorch eager only (torch.compile takes minutes on a small CPU).")
  parser.add_argument("--tiny", action="store_true",
                      help=f"Smoke test: defaults {_TINY} instead of {_FULL}.")
  parser.add_argument("--cpu_devices", type=int, default=0,
                      help="Split the CPU into this many devices, data-parallel (0: one).")
  parser.add_argument("--json_out", default=None, help="Also write the result here.")
  args = parser.parse_args(argv)
  if args.cpu_devices < 0:
    raise errors.UserError(f"--cpu_devices={args.cpu_devices} must be >= 0 (0: one device).")
  sharding.use_cpu_devices(args.cpu_devices)  # Before anything starts JAX.
  for key, value in (_TINY if args.tiny else _FULL).items():
    if getattr(args, key) is None:
      setattr(args, key, value)
  models.get_model(args.model, num_classes=args.num_classes)  # A clear error for a bad name.
  for key in ("batch_size", "image_size", "channels", "steps", "warmup"):
    if getattr(args, key) < 1:
      raise errors.UserError(f"--{key}={getattr(args, key)} must be >= 1.")
  if args.batch_size % jax.device_count():
    raise errors.UserError(f"--batch_size={args.batch_size} must divide over the "
                           f"{jax.device_count()} devices.")
  return args


def main(argv: list[str]) -> dict:
  args = _parse(argv)
  jax.config.update("jax_enable_compilation_cache", False)  # Real compile times.
  row, flops = measure_jax(args)
  rows, notes = [row], []
  if not args.skip_torch:
    for compiled in (False,) if args.skip_torch_compile else (False, True):
      torch_row = measure_torch(args, compiled)
      if torch_row is None:
        notes.append(f"No PyTorch twin of {args.model!r}: no PyTorch rows.")
        break
      rows.append(torch_row)
  peak = args.peak_tflops * 1e12 * jax.device_count() if args.peak_tflops else None
  for r in rows:
    r["mfu_percent"] = 100 * flops / (r["step_ms"] / 1000) / peak if peak and flops else None
  if all(r["peak_mb"] is None for r in rows):
    notes.append(f"peak MB: not reported on {jax.devices()[0].platform} by either framework.")
  if peak is None:
    notes.append("MFU: give --peak_tflops (the device's peak in this dtype) to fill it.")
  result = {"config": {k: v for k, v in vars(args).items() if k != "json_out"},
            "machine": _machine(), "train_flops_per_step": flops, "rows": rows, "notes": notes}
  print(table(result))
  if args.json_out:
    with open(args.json_out, "w") as f:
      json.dump(result, f, indent=2)
  return result


if __name__ == "__main__":
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # benchmark_torch.py.
  errors.run_argparse(main)
