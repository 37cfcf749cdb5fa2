"""R-CNN on the embedded shapes dataset: selective search, warped crops, a CNN, class-wise NMS.

    python -m projects.rcnn.train --workdir=runs/rcnn_shapes            # ~10 min, 2 CPUs
    python -m projects.rcnn.train --workdir=runs/rcnn_try --train_images=64 --test_images=16 \
        --steps=20                                                          # smoke run

1. Renders the first `--train_images` / `--test_images` scenes of `synthetic_shapes` at 64x64
   (the same examples the TFDS builder stores: each is rendered from its split seed and index).
2. Computes selective search proposals once (`--mode`, at most `--max_proposals` per image,
   padded), cached in the workdir, and reports their recall of the ground-truth boxes.
3. Trains `projects.rcnn.model.RCNN` end to end with one jitted, donated train step: each
   step labels every proposal of `--batch_images` images (ground-truth boxes added), samples
   `--rois_per_image` regions with 25% foreground, warps them and takes one AdamW step.
   A softmax classifier instead of the paper's per-class SVMs (Fast R-CNN's simplification).
4. Scores every proposal of the test images, applies class-wise NMS and reports COCO-style
   mAP@.5 and mAP@[.5:.95] (`vision_jax.tasks.detection.metrics`).

Writes WORKDIR/results.json (all numbers and the arguments) and prints them.
"""

import argparse
import functools
import json
import multiprocessing
import os
import time

import flax
import jax
import jax.numpy as jnp
import numpy as np

from projects.rcnn import model as rcnn
from projects.rcnn import selective_search
from vision_jax import config as config_lib
from vision_jax.data.builders import synthetic_shapes
from vision_jax.tasks.detection import metrics as det_metrics
from vision_jax.train import optim
from vision_jax.train.state import TrainState

NUM_CLASSES = len(synthetic_shapes.shapes_render.SHAPES)
MAX_OBJECTS = 3  # A scene holds 1-3 objects.


def load_split(split: str, num_images: int, size: int) -> dict[str, np.ndarray]:
  """The first `num_images` scenes of a split: images and padded ground truth in pixels."""
  images = np.zeros((num_images, size, size, 3), np.uint8)
  gt_boxes = np.zeros((num_images, MAX_OBJECTS, 4), np.float32)
  gt_labels = np.zeros((num_images, MAX_OBJECTS), np.int32)
  gt_valid = np.zeros((num_images, MAX_OBJECTS), bool)
  for i in range(num_images):
    example = synthetic_shapes.make_example(split, i, size)
    n = len(example["objects"]["label"])
    images[i] = example["image"]
    gt_boxes[i, :n] = example["objects"]["bbox"] * size
    gt_labels[i, :n] = example["objects"]["label"]
    gt_valid[i, :n] = True
  return {"images": images, "gt_boxes": gt_boxes, "gt_labels": gt_labels, "gt_valid": gt_valid}


def _search(image: np.ndarray, mode: str) -> np.ndarray:
  return selective_search.selective_search(image, mode=mode)


def compute_proposals(images: np.ndarray, mode: str, max_proposals: int,
                      workers: int) -> dict[str, np.ndarray]:
  """Selective search on every image, padded to `max_proposals` (best ranked kept).

  Returns:
    {"proposals": (N, P, 4) pixels, "valid": (N, P) bool, "found": (N,) boxes found before
    the cut to P}.
  """
  search = functools.partial(_search, mode=mode)
  if workers > 1:  # "spawn": forking a process that has started JAX is unsafe.
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
      found = pool.map(search, list(images), chunksize=16)
  else:
    found = [search(image) for image in images]
  proposals = np.zeros((len(images), max_proposals, 4), np.float32)
  valid = np.zeros((len(images), max_proposals), bool)
  for i, boxes in enumerate(found):
    boxes = boxes[:max_proposals]
    proposals[i, :len(boxes)], valid[i, :len(boxes)] = boxes, True
  return {"proposals": proposals, "valid": valid,
          "found": np.array([len(b) for b in found], np.int64)}


def proposal_recall(proposals: np.ndarray, valid: np.ndarray, gt_boxes: np.ndarray,
                    gt_valid: np.ndarray, threshold: float) -> float:
  """Fraction of ground-truth boxes with a proposal of IoU >= threshold."""
  hits = []
  for p, v, g, gv in zip(proposals, valid, gt_boxes, gt_valid):
    hits += list(det_metrics.box_iou(g[gv], p[v]).max(axis=1, initial=0.0) >= threshold)
  return float(np.mean(hits))


def make_train_step(model: rcnn.RCNN, crop_size: int, padding: int, rois_per_image: int,
                    positive_fraction: float = 0.25):
  """The jitted train step `(state, batch) -> (state, metrics)`; the state is donated.

  `batch` holds normalised `images` (B, H, W, 3), `proposals` (B, P, 4), `valid` (B, P),
  `gt_boxes` (B, G, 4), `gt_labels` (B, G) and `gt_valid` (B, G).
  """

  def rois_of_image(key, proposals, valid, gt_boxes, gt_labels, gt_valid):
    # As in the paper's fine-tuning, the ground-truth boxes are regions too.
    regions = jnp.concatenate([proposals, gt_boxes])  # (P + G, 4)
    region_valid = jnp.concatenate([valid, gt_valid])
    target = rcnn.label_proposals(regions, region_valid, gt_boxes, gt_labels, gt_valid)
    index, ok = rcnn.sample_rois(key, target["labels"], rois_per_image, positive_fraction)
    return (regions[index], target["labels"][index], target["targets"][index],
            target["regress"][index], ok)

  def step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
    rng = jax.random.fold_in(state.rng, state.step)
    sample_rng, dropout_rng = jax.random.split(rng)
    keys = jax.random.split(sample_rng, batch["images"].shape[0])
    rois, labels, targets, regress, ok = jax.vmap(rois_of_image)(
        keys, batch["proposals"], batch["valid"], batch["gt_boxes"], batch["gt_labels"],
        batch["gt_valid"])  # (B, N, ...)
    crops = rcnn.warp_crops(batch["images"], rois, crop_size, padding)  # (B, N, S, S, 3)
    flat = lambda x: x.reshape(-1, *x.shape[2:])  # noqa: E731  (B, N, ...) -> (B N, ...)

    def loss_fn(params):
      (logits, deltas), updates = state.apply_fn(
          {"params": params, "batch_stats": state.batch_stats}, flat(crops), train=True,
          mutable=["batch_stats"], rngs={"dropout": dropout_rng})
      total, metrics = rcnn.loss(logits, deltas, flat(labels), flat(targets), flat(regress),
                                 flat(ok))
      return total, (metrics, updates.get("batch_stats", {}))

    (_, (metrics, stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    return state.apply_gradients(grads, stats, ema_decay=0.0), metrics

  return jax.jit(step, donate_argnums=(0,))


def make_predict(model: rcnn.RCNN, crop_size: int, padding: int, height: int, width: int):
  """Jitted `(variables, images, proposals, valid) -> detections` (each (B, D, ...))."""

  def predict(variables, images, proposals, valid):
    crops = rcnn.warp_crops(images, proposals, crop_size, padding)  # (B, P, S, S, 3)
    logits, deltas = model.apply(variables, crops, train=False)  # (B, P, K + 1), (B, P, K, 4)
    return jax.vmap(functools.partial(rcnn.detect, height=height, width=width))(
        logits, deltas, proposals, valid)

  return jax.jit(predict)


def create_state(model: rcnn.RCNN, crop_size: int, steps: int, learning_rate: float,
                 seed: int) -> TrainState:
  """A fresh train state with the project's AdamW + warmup-cosine optimiser."""
  optim_config = config_lib.base_config().optim
  optim_config.learning_rate = learning_rate
  tx = optim.make_optimizer(optim_config, steps)
  init_rng, state_rng = jax.random.split(jax.random.key(seed))
  variables = model.init(init_rng, jnp.zeros((1, crop_size, crop_size, 3)), train=False)
  return TrainState(step=jnp.zeros((), jnp.int32), params=variables["params"],
                    batch_stats=variables.get("batch_stats", {}),
                    opt_state=tx.init(variables["params"]), rng=state_rng,
                    apply_fn=model.apply, tx=tx)


def evaluate(predict, variables, data: dict, normalise, batch_size: int) -> dict:
  """COCO-style AP of the detections on every image of `data`."""
  detections, truths = [], []
  for start in range(0, len(data["images"]), batch_size):
    part = slice(start, start + batch_size)
    out = jax.device_get(predict(variables, normalise(data["images"][part]),
                                 data["proposals"][part], data["valid"][part]))
    for i in range(len(out["valid"])):
      ok = out["valid"][i]
      detections.append({k: out[k][i][ok] for k in ("boxes", "labels", "scores")})
      gt_ok = data["gt_valid"][start + i]
      truths.append({"boxes": data["gt_boxes"][start + i][gt_ok],
                     "labels": data["gt_labels"][start + i][gt_ok]})
  result = det_metrics.average_precision(detections, truths, NUM_CLASSES)
  return {"map": result["map"], "map50": result["map50"], "map75": result["map75"],
          "ap50_per_class": dict(zip(synthetic_shapes.shapes_render.SHAPES,
                                     result["ap"][:, 0].round(4).tolist()))}


def prepare(args, split: str, num_images: int) -> dict:
  """A split's images, ground truth and (cached) proposals, with proposal statistics."""
  data = load_split(split, num_images, args.image_size)
  cache = os.path.join(args.workdir, f"proposals_{split}_{num_images}_{args.mode}_"
                       f"{args.max_proposals}_{args.image_size}.npz")
  if os.path.exists(cache):
    with np.load(cache) as stored:
      found, seconds = dict(stored), None
  else:
    start = time.perf_counter()
    found = compute_proposals(data["images"], args.mode, args.max_proposals, args.workers)
    seconds = time.perf_counter() - start
    np.savez(cache, **found)
  data.update(proposals=found["proposals"], valid=found["valid"])
  stats = {f"recall@{t}": proposal_recall(found["proposals"], found["valid"], data["gt_boxes"],
                                          data["gt_valid"], t) for t in (0.5, 0.7)}
  stats.update(proposals_found=float(found["found"].mean()),
               proposals_kept=float(found["valid"].sum(1).mean()),
               seconds_per_image=None if seconds is None else seconds / num_images)
  return data, stats


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", default="runs/rcnn_shapes")
  parser.add_argument("--train_images", type=int, default=1000)
  parser.add_argument("--test_images", type=int, default=500)
  parser.add_argument("--image_size", type=int, default=64)
  parser.add_argument("--mode", default="fast", choices=sorted(selective_search.MODES))
  parser.add_argument("--max_proposals", type=int, default=256)
  parser.add_argument("--workers", type=int, default=2, help="processes for selective search")
  parser.add_argument("--backbone", default="simple_cnn")
  parser.add_argument("--backbone_kwargs", default='{"features": [16, 32]}',
                      help="JSON fields of the backbone (a narrow SimpleCNN for CPUs)")
  parser.add_argument("--crop_size", type=int, default=32)
  parser.add_argument("--padding", type=int, default=2, help="context pixels (16 at 227 px)")
  parser.add_argument("--steps", type=int, default=2000)
  parser.add_argument("--batch_images", type=int, default=2)
  parser.add_argument("--rois_per_image", type=int, default=64)
  parser.add_argument("--learning_rate", type=float, default=1e-3)
  parser.add_argument("--eval_batch", type=int, default=8)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  os.makedirs(args.workdir, exist_ok=True)
  results = {"args": vars(args)}

  start = time.perf_counter()
  train, results["proposals_train"] = prepare(args, "train", args.train_images)
  test, results["proposals_test"] = prepare(args, "test", args.test_images)
  results["prepare_seconds"] = time.perf_counter() - start
  print("proposals:", json.dumps({k: results[k] for k in ("proposals_train", "proposals_test")}),
        flush=True)

  pixels = train["images"].reshape(-1, 3) / 255.0
  mean, std = pixels.mean(0), pixels.std(0)
  normalise = lambda x: ((x / 255.0 - mean) / std).astype(np.float32)  # noqa: E731
  model = rcnn.RCNN(num_classes=NUM_CLASSES, backbone=args.backbone,
                    backbone_kwargs=flax.core.FrozenDict(json.loads(args.backbone_kwargs)))
  state = create_state(model, args.crop_size, args.steps, args.learning_rate, args.seed)
  train_step = make_train_step(model, args.crop_size, args.padding, args.rois_per_image)
  keys = ("proposals", "valid", "gt_boxes", "gt_labels", "gt_valid")
  rng = np.random.default_rng(args.seed)
  start, history = time.perf_counter(), []
  for step in range(1, args.steps + 1):
    index = rng.choice(args.train_images, args.batch_images, replace=False)
    batch = {"images": normalise(train["images"][index]), **{k: train[k][index] for k in keys}}
    state, metrics = train_step(state, batch)
    if step == 1 or step % 100 == 0 or step == args.steps:
      metrics = {k: round(float(v), 4) for k, v in jax.device_get(metrics).items()}
      history.append({"step": step, "seconds": round(time.perf_counter() - start, 1), **metrics})
      print(json.dumps(history[-1]), flush=True)
  results["train_seconds"] = time.perf_counter() - start
  results["history"] = history

  start = time.perf_counter()
  predict = make_predict(model, args.crop_size, args.padding, args.image_size, args.image_size)
  results["test"] = evaluate(predict, state.eval_variables(), test, normalise, args.eval_batch)
  results["eval_seconds"] = time.perf_counter() - start
  print("test:", json.dumps(results["test"]), flush=True)
  with open(os.path.join(args.workdir, "results.json"), "w") as f:
    json.dump(results, f, indent=2)
  return results


if __name__ == "__main__":
  main()
