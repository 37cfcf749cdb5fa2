"""The classification training loop: data → compiled steps → metrics, checkpoints, plots.

A workdir that holds a checkpoint resumes from it (state and data position), so rerunning the
same command after a crash, a SIGKILL or a preemption continues exactly where the last
checkpoint left off. SIGTERM saves a checkpoint first, then returns.
"""

import json
import math
import os
import signal
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tqdm

from vision_jax import config as config_lib
from vision_jax import models
from vision_jax.data import datasets, pipeline
from vision_jax.evaluate import classification
from vision_jax.train import checkpoint, metric_writer, optim, parallel, steps
from vision_jax.train.state import create_train_state
from vision_jax.viz import curves


class _SigtermFlag:
  """Turns SIGTERM into a flag the loop polls, so the state is saved before exiting."""

  def __init__(self):
    self.raised = False

  def __enter__(self):
    self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def _handle(self, signum, frame):
    del signum, frame
    self.raised = True

  def __exit__(self, *exc):
    signal.signal(signal.SIGTERM, self._previous)


def _mean_metrics(pending: list[dict]) -> dict:
  """Averages per-step device metrics (one host transfer) and fails on NaN/inf."""
  values = jax.device_get(pending)
  means = {k: float(np.mean([m[k] for m in values])) for k in values[0]}
  if not all(math.isfinite(v) for v in means.values()):
    raise FloatingPointError(
        f"Non-finite training metrics {means}: stopping before the next checkpoint so the last "
        "good one is kept. Lower optim.learning_rate, set optim.grad_clip_norm, or use float32.")
  return means


def evaluate(eval_step, state, config: ml_collections.ConfigDict, source, sharding) -> dict:
  """One full pass over `source`; returns top-1/top-5 accuracy and error and the mean loss."""
  totals = None
  for batch in pipeline.eval_batches(config.input, source):
    sums = eval_step(state, pipeline.to_global(batch, sharding))
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  return classification.finalize(totals)


def _total_steps(config: ml_collections.ConfigDict, num_train_examples: int) -> int:
  if config.train.num_steps is not None:
    return config.train.num_steps
  return max(1, math.ceil(config.train.num_epochs * num_train_examples / config.input.batch_size))


def _drop_records_after(path: str, step: int) -> None:
  """On resume, forgets logged records newer than the restored checkpoint (they recur)."""
  if jax.process_index() == 0 and os.path.exists(path):
    kept = [r for r in metric_writer.read_jsonl(path) if r["step"] <= step]
    with open(path, "w") as f:
      f.writelines(json.dumps(r) + "\n" for r in kept)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains and evaluates a classifier as `config` says, writing everything into `workdir`.

  Args:
    config: an experiment config (see `vision_jax.config.base_config`).
    workdir: output directory: `checkpoints/`, `tensorboard/`, `metrics.jsonl`, `config.json`,
      `curves.png`. If it holds a checkpoint, training resumes from it.

  Returns:
    The last eval metrics, plus `step` and `preempted` (True when SIGTERM stopped the run).
  """
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  mesh = parallel.make_mesh()
  config_lib.validate(config, num_devices=mesh.size)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json(indent=2))

  builder = datasets.get_builder(config.dataset)
  info = datasets.info(builder)
  train_source, eval_source = (
      datasets.open_split(builder, split, in_memory=config.dataset.in_memory)
      for split in (config.dataset.train_split, config.dataset.eval_split))
  channels = builder.info.features["image"].shape[-1]
  size = config.input.image_size
  image_shape = info.image_shape if size is None else (size, size, channels)
  if image_shape is None:
    raise ValueError(f"Dataset {info.name!r} has images of varying size; set "
                     "config.input.image_size.")
  total_steps = _total_steps(config, len(train_source))

  model = models.get_model(config.model.name, num_classes=info.num_classes,
                           dtype=jnp.dtype(config.model.dtype), **config.model.kwargs)
  tx = optim.make_optimizer(config.optim, total_steps)
  schedule = optim.learning_rate_schedule(config.optim, total_steps)  # For logging.
  state = create_train_state(model, tx, jax.random.key(config.seed), image_shape, mesh,
                             use_ema=config.train.ema_decay > 0)
  train_step, eval_step = steps.compile_steps(
      mesh, state, label_smoothing=config.train.label_smoothing,
      ema_decay=config.train.ema_decay, aux_loss_weight=config.train.aux_loss_weight)
  batch_sharding = parallel.data_sharding(mesh)
  train_iter = iter(pipeline.train_loader(config.input, train_source, seed=config.seed))

  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"),
                                 keep=config.train.keep_checkpoints,
                                 best_metric=config.train.best_metric)
  writer_path = os.path.join(workdir, "metrics.jsonl")
  if (latest := ckpt.latest_step()) is not None:
    state = ckpt.restore(latest, _abstract(state), train_iter)
    _drop_records_after(writer_path, latest)
  writer = metric_writer.MetricWriter(workdir)

  step = int(state.step)
  is_main = jax.process_index() == 0
  bar = tqdm.tqdm(total=total_steps, initial=step, unit="step", dynamic_ncols=True,
                  disable=not (is_main and config.train.progress_bar))
  pending, eval_metrics, preempted = [], {}, False
  tick, tick_step = time.perf_counter(), step
  try:
    with _SigtermFlag() as sigterm:
      while step < total_steps:
        batch = pipeline.to_global(next(train_iter), batch_sharding)
        state, metrics = train_step(state, batch)
        pending.append(metrics)
        step += 1
        last = step == total_steps
        do_eval = last or step % config.train.eval_every == 0
        do_save = do_eval or step % config.train.checkpoint_every == 0 or sigterm.raised
        if do_save or step % config.train.log_every == 0:
          train_metrics = _mean_metrics(pending)  # Raises on NaN before anything is saved.
          pending = []
          now = time.perf_counter()
          train_metrics["images_per_sec"] = (
              (step - tick_step) * config.input.batch_size / (now - tick))
          train_metrics["learning_rate"] = float(schedule(step))
          tick, tick_step = now, step
          writer.write(step, "train", train_metrics)
          bar.set_postfix(loss=f"{train_metrics['loss']:.4f}",
                          img_s=f"{train_metrics['images_per_sec']:.0f}")
        bar.update(1)
        if do_eval:
          eval_metrics = evaluate(eval_step, state, config, eval_source, batch_sharding)
          writer.write(step, "eval", eval_metrics)
          bar.write(f"step {step}: eval accuracy {eval_metrics['accuracy']:.4f} "
                    f"(top-5 {eval_metrics['top5_accuracy']:.4f}), loss {eval_metrics['loss']:.4f}")
        if do_save:
          ckpt.save(step, state, train_iter, metrics=eval_metrics if do_eval else None)
        if sigterm.raised:
          preempted = True
          bar.write(f"SIGTERM: saved a checkpoint at step {step}; rerun the same command to "
                    "resume.")
          break
  finally:  # Even on NaN or Ctrl-C: finish pending saves, close files.
    bar.close()
    ckpt.close()
    writer.close()
  if is_main and not preempted:
    _report(workdir, writer_path, config)
  return {**eval_metrics, "step": step, "preempted": preempted}


def _abstract(state):
  """Shapes, dtypes and shardings of `state`, to restore a checkpoint onto."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                      state)


def _report(workdir: str, metrics_path: str, config: ml_collections.ConfigDict) -> None:
  """Plots the curves and tells the user where everything is."""
  plot = curves.plot_training_curves(metric_writer.read_jsonl(metrics_path),
                                     os.path.join(workdir, "curves.png"),
                                     title=f"{config.model.name} on {config.dataset.name}")
  print(f"Done. Workdir: {workdir}\n"
        f"  metrics:     {metrics_path}\n"
        f"  tensorboard: tensorboard --logdir {os.path.join(workdir, 'tensorboard')}\n"
        f"  checkpoints: {os.path.join(workdir, 'checkpoints')}\n"
        f"  curves:      {plot}")
