"""Input pipeline throughput, and whether the train step ever waits for it.

    python experiments/pipeline_benchmark.py                  # the README's table
    python experiments/pipeline_benchmark.py --tiny           # seconds (CI)

Three measurements, each through the project's own pipeline (`pipeline.train_batches`: grain,
per-record augmentation drawn from the record's position, normalisation), on data made here so
that no dataset is needed:

1. Small images (28x28x1 like Fashion-MNIST, 32x32x3 like CIFAR) from memory: pad-and-crop and
   flips, batch 256; images/s of the pipeline alone, per CPU core it used.
2. ImageNet-style 224x224: JPEG decoding (`--jpeg_size` photos-like images, PIL) + Inception
   random-resized crop + flip + normalisation, with 0 (the main process) and N grain worker
   processes; images/s and per worker.
3. Step vs input: the project's compiled train step for `--model` at the small-image size alone
   (synthetic batches on the device), and the same step fed by the pipeline; the difference
   is time the step waited for input (here, 2 cores shared by both).
"""

import argparse
import io
import os
import sys
import time

import jax
import numpy as np
from PIL import Image

from vision_jax import errors
from vision_jax.data import pipeline
from vision_jax.models import info


class ArraySource:
  """A random-access source of `{"image", "label"}` examples from arrays (grain's protocol)."""

  def __init__(self, images: np.ndarray, labels: np.ndarray):
    self.images, self.labels = images, labels

  def __len__(self) -> int:
    return len(self.images)

  def __getitem__(self, index: int) -> dict:
    return {"image": self.images[index], "label": self.labels[index]}

  def __repr__(self) -> str:
    return f"ArraySource({self.images.shape})"


class JpegSource(ArraySource):
  """JPEG bytes decoded on every read, as a TFDS image feature is."""

  def __getitem__(self, index: int) -> dict:
    image = np.asarray(Image.open(io.BytesIO(self.images[index])).convert("RGB"))
    return {"image": image, "label": self.labels[index]}

  def __repr__(self) -> str:
    return f"JpegSource({len(self.images)})"


def _photos(num: int, size: tuple[int, int], rng: np.random.Generator) -> list[bytes]:
  """`num` JPEGs (quality 90) of smooth random images: roughly photos' entropy, not noise's."""
  out = []
  for _ in range(num):
    small = rng.integers(0, 256, (size[0] // 16, size[1] // 16, 3), np.uint8)
    image = Image.fromarray(small).resize((size[1], size[0]), Image.BICUBIC)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    out.append(buffer.getvalue())
  return out


def _images_per_sec(batches, num_batches: int, batch_size: int) -> float:
  next(batches)  # Start-up (threads, workers) is not throughput.
  start = time.perf_counter()
  for _ in range(num_batches):
    next(batches)
  return num_batches * batch_size / (time.perf_counter() - start)


def small_images(shape: tuple[int, int, int], batch_size: int, num_batches: int) -> float:
  rng = np.random.default_rng(0)
  n = batch_size * (num_batches + 2)
  source = ArraySource(rng.integers(0, 256, (n, *shape), np.uint8), rng.integers(0, 10, n))
  options = pipeline.InputOptions(batch_size=batch_size, crop_padding=2, random_flip=True)
  return _images_per_sec(pipeline.train_batches(source, options, seed=0), num_batches,
                         batch_size)


def jpeg_imagenet(batch_size: int, num_batches: int, workers: int, jpeg_size) -> float:
  rng = np.random.default_rng(0)
  n = batch_size * (num_batches + 2)
  source = JpegSource(_photos(n, jpeg_size, rng), rng.integers(0, 1000, n))
  options = pipeline.InputOptions(batch_size=batch_size, image_size=224,
                                  train_crop="random_resized", random_flip=True,
                                  mean=info.IMAGENET_MEAN, std=info.IMAGENET_STD,
                                  num_workers=workers, prefetch=2)
  return _images_per_sec(pipeline.train_batches(source, options, seed=0), num_batches,
                         batch_size)


def step_vs_input(model: str, shape, batch_size: int, num_batches: int) -> dict:
  """ms per step with synthetic device batches, and with the pipeline feeding the same step."""
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  import benchmark  # pylint: disable=g-import-not-at-top  (next to this file)
  from vision_jax import models, tasks  # pylint: disable=g-import-not-at-top
  from vision_jax.train import steps  # pylint: disable=g-import-not-at-top
  from vision_jax import sharding  # pylint: disable=g-import-not-at-top
  from vision_jax.train.state import create_train_state  # pylint: disable=g-import-not-at-top

  net = models.get_model(model, num_classes=10)
  mesh = sharding.make_mesh()
  state = create_train_state(net, benchmark.optimizer(), jax.random.key(0), shape, mesh,
                             use_ema=False)
  task = tasks.ClassificationTask()
  compiled = steps.compile_steps(mesh, state, task, strategy="jit")
  state = compiled.to_train_layout(state)
  rng = np.random.default_rng(0)
  n = batch_size * (num_batches + 4)
  source = ArraySource(rng.integers(0, 256, (n, *shape), np.uint8), rng.integers(0, 10, n))
  options = pipeline.InputOptions(batch_size=batch_size, crop_padding=2, random_flip=True)
  batches = pipeline.train_batches(source, options, seed=0)
  fixed = jax.device_put(next(batches), sharding.data_sharding(mesh))  # On the devices, once.
  for _ in range(3):  # Compile and warm up.
    state, metrics = compiled.train(state, fixed)
  jax.block_until_ready(metrics)
  start = time.perf_counter()
  for _ in range(num_batches):
    state, metrics = compiled.train(state, fixed)
  jax.block_until_ready(metrics)
  alone = (time.perf_counter() - start) / num_batches
  start = time.perf_counter()
  for _ in range(num_batches):
    state, metrics = compiled.train(state, next(batches))
  jax.block_until_ready(metrics)
  fed = (time.perf_counter() - start) / num_batches
  return {"step_ms": 1000 * alone, "fed_step_ms": 1000 * fed,
          "waiting_percent": max(0.0, 100 * (fed - alone) / fed)}


def main(argv: list[str]) -> dict:
  parser = argparse.ArgumentParser(prog="experiments/pipeline_benchmark.py", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--model", default="simple_cnn")
  parser.add_argument("--batches", type=int, default=40)
  parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
  parser.add_argument("--jpeg_size", default="375,500", help="height,width of the JPEGs")
  parser.add_argument("--tiny", action="store_true")
  args = parser.parse_args(argv)
  cores = len(os.sched_getaffinity(0))
  batches = 2 if args.tiny else args.batches
  big_batch = 8 if args.tiny else 64
  jpeg_size = tuple(int(v) for v in args.jpeg_size.split(","))
  rows = []
  for shape in ((28, 28, 1), (32, 32, 3)):
    rate = small_images(shape, 256, batches)
    rows.append(("x".join(map(str, shape)) + ", pad-2 crop + flip, batch 256", "main", rate,
                 rate / cores))
  for workers in (0, args.workers):
    rate = jpeg_imagenet(big_batch, batches, workers, jpeg_size)
    who = "main" if not workers else f"{workers} workers"
    rows.append((f"{jpeg_size[0]}x{jpeg_size[1]} JPEG → decode + random-resized crop 224 + "
                 f"flip, batch {big_batch}", who, rate, rate / max(workers, 1)))
  print(f"Input pipeline, {cores} CPU cores\n\n| data and work | process | images/s | "
        "images/s per core or worker |\n|---|---|---:|---:|")
  for what, who, rate, per in rows:
    print(f"| {what} | {who} | {rate:,.0f} | {per:,.0f} |")
  timing = step_vs_input(args.model, (32, 32, 3), 128 if not args.tiny else 8, batches)
  print(f"\n{args.model}, 32x32x3, batch {128 if not args.tiny else 8}: train step "
        f"{timing['step_ms']:.1f} ms on a fixed batch, {timing['fed_step_ms']:.1f} ms fed by the "
        f"pipeline: waiting for input {timing['waiting_percent']:.0f}% of the time.")
  return {"rows": rows, **timing}


if __name__ == "__main__":
  errors.run_argparse(main)
