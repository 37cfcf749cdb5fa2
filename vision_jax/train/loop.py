"""The training loop of every task: data → compiled steps → metrics, checkpoints, plots.

A workdir that holds a checkpoint resumes from the newest intact one (the state; the data
position follows from the step), so rerunning the same command after a crash, a SIGKILL or a
preemption continues exactly where the last checkpoint left off, on any number of devices or
processes. SIGTERM saves a checkpoint first, then returns. A rerun whose config changes what the
workdir trains is refused before anything is written (`vision_jax.train.workdir`); NaN/inf
stops the run with the last good checkpoint kept (`vision_jax.train.checkpoint`).
"""

import math
import os
import signal
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tqdm
from jax.experimental import multihost_utils

from vision_jax import config as config_lib
from vision_jax import errors, tasks
from vision_jax.data import datasets, pipeline
from vision_jax.train import checkpoint, curves, metric_writer, optim, startup, steps, weights
from vision_jax import sharding
from vision_jax.train import workdir as workdir_lib
from vision_jax.train.state import train_state_initializer


class _Preemption:
  """SIGTERM → save and stop, at the same step on every process.

  One process: SIGTERM sets a flag the loop polls. Several processes: `jax.distributed`'s
  preemption service catches SIGTERM on any of them and agrees on a step all of them reach
  (`reached_preemption_sync_point`), so their collective checkpoint is of the same step.
  """

  def __enter__(self):
    self._raised = False
    self._multi = jax.process_count() > 1
    if not self._multi:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def _handle(self, signum, frame):
    del signum, frame
    self._raised = True

  def reached(self, step: int) -> bool:
    """Whether to save and stop after `step` (call it at every step)."""
    if self._multi:
      return multihost_utils.reached_preemption_sync_point(step)
    return self._raised

  def __exit__(self, *exc):
    if not self._multi:
      signal.signal(signal.SIGTERM, self._previous)


def _check_metrics(pending: list[dict], step: int, ckpt: checkpoint.Checkpointer) -> dict:
  """Means of the per-step metrics since the last check (one host transfer), checked finite.

  The metrics of step `t` are computed from the state after step `t - 1`, so finite metrics up
  to `step` prove every state up to `step - 1` good (`Checkpointer.confirm`), and a non-finite
  value at step `t` proves the states from `t - 1` on bad: their checkpoints are set aside.

  Raises:
    FloatingPointError: on the first NaN/inf, after setting aside the checkpoints it condemns.
  """
  values = jax.device_get(pending)
  first = step - len(values) + 1
  for offset, metrics in enumerate(values):
    bad = {k: float(v) for k, v in metrics.items() if not math.isfinite(float(v))}
    if bad:
      bad_step = first + offset
      moved = ckpt.set_aside(bad_step - 1, "non_finite")
      latest = ckpt.latest_step()
      raise FloatingPointError(
          f"Non-finite training metrics {bad} at step {bad_step} (computed from the state after "
          f"step {bad_step - 1}). "
          + (f"Its checkpoints were moved aside: {moved}. " if moved else "")
          + (f"The last good checkpoint is step {latest}; a rerun resumes there. "
             if latest is not None else "No good checkpoint is left. ")
          + "Lower optim.learning_rate, set optim.grad_clip_norm, or use float32.")
  ckpt.confirm(step - 1)
  return {k: float(np.mean([m[k] for m in values])) for k in values[0]}


def evaluate(eval_step, state, config: ml_collections.ConfigDict, source,
             task: tasks.Task) -> dict:
  """One full pass over `source`; returns the task's eval metrics.

  Args:
    eval_step: `(state, local_batch) -> sums` (`CompiledSteps.evaluate`).
    state: the global train state.
    config: the experiment config.
    source: the eval split.
    task: turns the summed batches into metrics.
  """
  totals = None
  for batch in pipeline.eval_batches(source, pipeline.InputOptions.from_config(config.input),
                                     keys=task.keys, kinds=task.feature_kinds,
                                     example_fn=task.example_transform):
    sums = eval_step(state, batch)
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  return task.finalize(jax.device_get(totals))


def _total_steps(config: ml_collections.ConfigDict, num_train_examples: int) -> int:
  if config.train.num_steps is not None:
    return config.train.num_steps
  return max(1, math.ceil(config.train.num_epochs * num_train_examples / config.input.batch_size))


def _say(message: str, warning: bool = False) -> None:
  """Prints on process 0 only (warnings to stderr)."""
  if jax.process_index() == 0:
    print(("Warning: " if warning else "") + message, file=sys.stderr if warning else sys.stdout,
          flush=True)


def _start_state(config: ml_collections.ConfigDict, workdir: str, ckpt: checkpoint.Checkpointer,
                 init, abstract, changes: dict):
  """The state a run starts from: the newest intact checkpoint, or a fresh (or pretrained) one.

  Refuses a config that changed what the workdir trains before anything is written, and says
  what happened: resumed, fell back past damaged checkpoints, or started from scratch.
  """
  try:
    restored = ckpt.restore_newest_intact(abstract)
  except checkpoint.StructureMismatchError as e:
    workdir_lib.refuse_changes(workdir, changes, e.differences)
  except checkpoint.DamagedCheckpointError as e:
    raise errors.UserError(str(e)) from e
  for step, why, path in restored.set_aside:
    _say(f"checkpoint {step} is damaged ({why}); moved it to {path}.", warning=True)
  if restored.state is not None:
    newest = restored.set_aside[0][0] if restored.set_aside else None
    _say(f"Resumed from step {restored.step}" if newest is None else
         f"Fell back from step {newest} to step {restored.step}, the newest intact checkpoint")
    if changes:
      _say(f"Config changes accepted (recorded in {workdir_lib.CHANGES_FILE}): "
           f"{workdir_lib.describe_changes(changes)}")
    return restored.state, restored.step
  state = init(jax.random.key(config.seed))
  if config.model.init_from is not None:
    state, fresh = weights.load_pretrained(state, weights.read_weights(config.model.init_from))
    loaded = len(jax.tree.leaves(state.params)) + len(jax.tree.leaves(state.batch_stats))
    _say(f"Started from {config.model.init_from}: {loaded - len(fresh)} of {loaded} arrays "
         f"loaded; freshly initialised: {fresh or 'none'}")
  else:
    _say("Started from scratch")
  return state, 0


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       task: tasks.Task | None = None) -> dict:
  """Trains and evaluates a model as `config` says, writing everything into `workdir`.

  Args:
    config: an experiment config (see `vision_jax.config.base_config`).
    workdir: output directory: `checkpoints/`, `tensorboard/`, `metrics.jsonl`, `config.json`,
      `curves.png`. If it holds a checkpoint, training resumes from the newest intact one.
    task: the task to train, e.g. an instance of a paper's own `Task` subclass; None builds
      the one registered as `config.task` (`tasks.get_task`). `viz` and inference rebuild a
      workdir's task from `config.task`, so register a task of your own under that name
      (`vision_jax.tasks.register`) to use them.

  Returns:
    The last eval metrics, plus `step` and `preempted` (True when SIGTERM stopped the run).

  Raises:
    errors.UserError: for a bad config, or one that changes what `workdir` trains.
    FloatingPointError: when the loss or the state becomes NaN/inf (the last good checkpoint
      is kept).
  """
  if not workdir:
    raise errors.UserError("The workdir is empty; pass --workdir=DIR (created if missing).")
  workdir = os.path.abspath(workdir)
  config_lib.validate(config, num_devices=jax.device_count(),
                      task_type=None if task is None else type(task))
  if not jax.config.jax_threefry_partitionable:
    _say("jax_threefry_partitionable is off: dropout masks then depend on how the batch is "
         "sharded, so runs on other device or process counts will differ.", warning=True)
  with workdir_lib.exclusive(workdir, is_main=jax.process_index() == 0):
    return _train_and_evaluate(config, workdir, task or tasks.get_task(config))


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                        task: tasks.Task) -> dict:
  """`train_and_evaluate` on a validated config and a workdir this run holds."""
  cache = startup.use_compilation_cache(config.train.compilation_cache)
  changes = workdir_lib.config_changes(workdir_lib.read_saved_config(workdir), config)
  if workdir_lib.identity_changes(changes) and workdir_lib.has_checkpoints(workdir):
    workdir_lib.refuse_changes(workdir, changes, [])  # Before even opening the dataset.
  mesh = sharding.make_mesh(fsdp=config.parallel.fsdp)

  builder = datasets.builder_from_config(config.dataset)
  task.check_dataset(builder)
  info = datasets.info(builder)
  channels = builder.info.features["image"].shape[-1]
  size = config.input.image_size
  image_shape = info.image_shape if size is None else (size, size, channels)
  if image_shape is None:
    raise errors.UserError(f"Dataset {info.name!r} has images of varying size; set "
                           "config.input.image_size.")
  config_lib.validate_image_shape(config, image_shape, type(task))  # Before any split is read.
  train_source, eval_source = (
      datasets.open_split(builder, split, keys=task.dataset_keys(),
                          in_memory=config.dataset.in_memory)
      for split in (config.dataset.train_split, config.dataset.eval_split))
  total_steps = _total_steps(config, len(train_source))
  os.makedirs(workdir, exist_ok=True)  # Other processes than 0 (which took the lock).
  task = task.prepare(builder, train_source, workdir)

  model = task.build_model(config, builder)
  if config.parallel.strategy == "pmap" and hasattr(model, "bn_axis_name"):
    model = model.clone(bn_axis_name=sharding.PMAP_AXIS)  # Global-batch BatchNorm, as jit.
  tx = optim.make_optimizer(config.optim, total_steps)
  schedule = optim.learning_rate_schedule(config.optim, total_steps)  # For logging.
  init, abstract = train_state_initializer(
      model, tx, image_shape, mesh, use_ema=config.train.ema_decay > 0,
      init_inputs=task.init_inputs(image_shape))
  ckpt = checkpoint.Checkpointer(
      os.path.join(workdir, "checkpoints"), keep=config.train.keep_checkpoints,
      best_metric=config.train.best_metric,
      lower_is_better=config.train.best_metric in task.lower_is_better)
  try:
    state, step = _start_state(config, workdir, ckpt, init, abstract, changes)
  except BaseException:
    ckpt.close()
    raise
  if jax.process_index() == 0:
    workdir_lib.record_config(workdir, config, changes if step else {}, step)
    workdir_lib.truncate_records(workdir, step)
  if jax.process_index() == 0:  # Lowers the forward pass: only where it is printed.
    _say(startup.describe(config, model, abstract, task, image_shape, len(train_source),
                          len(eval_source), total_steps, cache))
  writer = metric_writer.MetricWriter(workdir, start_step=step,
                                      wandb_project=config.train.wandb_project,
                                      config=config.to_dict())
  compiled = steps.compile_steps(
      mesh, state, task, strategy=config.parallel.strategy, ema_decay=config.train.ema_decay,
      grad_accum_steps=config.train.grad_accum_steps, eval_flip=config.train.eval_flip)

  train_iter = pipeline.train_batches(train_source,
                                      pipeline.InputOptions.from_config(config.input),
                                      seed=config.seed, start_step=step, keys=task.keys,
                                      kinds=task.feature_kinds,
                                      example_fn=task.example_transform)
  train_state = compiled.to_train_layout(state)
  del state  # Donated to the first step under jit; pmap holds its own copy.
  is_main = jax.process_index() == 0
  bar = tqdm.tqdm(total=total_steps, initial=step, unit="step", dynamic_ncols=True,
                  disable=not (is_main and config.train.progress_bar))
  pending, eval_metrics, preempted = [], {}, False
  tick, tick_step = time.perf_counter(), step
  profiler = startup.Profiler(config.train.profile_steps, os.path.join(workdir, "profile"))
  try:
    with _Preemption() as preemption:
      while step < total_steps:
        profiler.before(step + 1)
        train_state, metrics = compiled.train(train_state, next(train_iter))
        pending.append(metrics)
        step += 1
        profiler.after(step, train_state)
        last = step == total_steps
        preempted = preemption.reached(step)
        do_eval = last or step % config.train.eval_every == 0
        do_save = do_eval or step % config.train.checkpoint_every == 0 or preempted
        if do_save or step % config.train.log_every == 0:
          train_metrics = _check_metrics(pending, step, ckpt)  # Raises on NaN before saving.
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
        if do_eval or do_save:
          # Global arrays (a view under jit; pmap's per-device copies gathered once).
          global_state = compiled.to_global(train_state)
        if do_eval:
          eval_metrics = evaluate(compiled.evaluate, global_state, config, eval_source, task)
          eval_metrics.update(task.evaluate_more(
              model, global_state.eval_variables(), config, eval_source, mesh, workdir, step))
          if global_state.ema_params is not None:  # The live weights too, as `raw/<metric>`
            # (summed metrics only; `best_metric` ranks the EMA's).
            raw = evaluate(compiled.evaluate_raw, global_state, config, eval_source, task)
            eval_metrics.update({f"raw/{k}": v for k, v in raw.items()})
          writer.write(step, "eval", eval_metrics)
          if task.picture_dir and os.path.exists(picture := task.picture_path(workdir, step)):
            writer.write_image(step, f"eval/{task.picture_dir}", picture)
          if is_main:
            raw_line = (f"; raw weights {task.curve_metric} "
                        f"{eval_metrics[f'raw/{task.curve_metric}']:.4f}"
                        if f"raw/{task.curve_metric}" in eval_metrics else "")
            bar.write(f"step {step}: eval {task.summary(eval_metrics)}{raw_line}")
            task.on_eval(global_state.apply_fn, global_state.eval_variables(), config,
                         eval_source, workdir, step)
        if do_save:  # Refuses a NaN/inf state or eval metric: the last good one stays.
          ckpt.save(step, global_state, metrics=eval_metrics if do_eval else None)
        if do_eval or do_save:
          del global_state  # Under jit the next step donates these buffers.
        if preempted:
          bar.write(f"SIGTERM: saved a checkpoint at step {step}; rerun the same command to "
                    "resume.")
          break
    if is_main and not preempted:
      writer.write_image(step, "curves", _report(workdir, config, task.curve_metric))
  finally:  # Even on NaN or Ctrl-C: finish pending saves, close files.
    profiler.close()
    bar.close()
    ckpt.close()
    writer.close()
  return {**eval_metrics, "step": step, "preempted": preempted}


def _report(workdir: str, config: ml_collections.ConfigDict, curve_metric: str) -> str:
  """Plots the curves, tells the user where everything is, and returns the plot's path."""
  metrics_path = os.path.join(workdir, metric_writer.METRICS_FILE)
  plot = curves.plot_training_curves(metric_writer.read_jsonl(metrics_path),
                                     os.path.join(workdir, "curves.png"),
                                     title=f"{config.model.name} on {config.dataset.name}",
                                     metrics=("loss", curve_metric))
  print(f"Done. Workdir: {workdir}\n"
        f"  metrics:     {metrics_path}\n"
        f"  tensorboard: tensorboard --logdir {os.path.join(workdir, 'tensorboard')}\n"
        f"  checkpoints: {os.path.join(workdir, 'checkpoints')}\n"
        f"  curves:      {plot}")
  return plot
