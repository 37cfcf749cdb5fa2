"""The training loop of every task: data → compiled steps → metrics, checkpoints, plots.

A workdir that holds a checkpoint resumes from the newest intact one (the state; the data
position follows from the step), so rerunning the same command after a crash, a SIGKILL or a
preemption continues exactly where the last checkpoint left off, on any number of devices or
processes. SIGTERM saves a checkpoint first, then returns. A rerun whose config changes what the
workdir trains is refused before anything is written (`vision_jax.train.workdir`); NaN/inf
stops the run with the last good checkpoint kept (`vision_jax.train.checkpoint`).
"""

import dataclasses
import math
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tqdm
from jax.experimental import multihost_utils

from vision_jax import config as config_lib
from vision_jax import errors, sharding, tasks
from vision_jax.data import datasets, pipeline
from vision_jax.train import checkpoint, curves, metric_writer, optim, startup, steps, weights
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

  `setup`, then `train`, then `report`, inside the workdir's lock.

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
  wanted, have = config.parallel.cpu_devices, len(jax.devices("cpu"))
  if wanted and jax.default_backend() == "cpu" and have != wanted:
    _say(f"config.parallel.cpu_devices={wanted} not applied: JAX had already started with "
         f"{have} CPU devices in this process (python -m vision_jax.main applies it before JAX "
         "starts).", warning=True)
  if not jax.config.jax_threefry_partitionable:
    _say("jax_threefry_partitionable is off: dropout masks then depend on how the batch is "
         "sharded, so runs on other device or process counts will differ.", warning=True)
  with workdir_lib.exclusive(workdir, is_main=jax.process_index() == 0):
    run = setup(config, workdir, task or tasks.get_task(config))
    try:
      result = train(run)
      if jax.process_index() == 0 and not result["preempted"]:
        report(run, result["step"])
    finally:  # Even on NaN or Ctrl-C: finish pending saves, close files.
      run.close()
  return result


@dataclasses.dataclass
class Run:
  """A run that `setup` prepared: what `train` trains and evaluates, and `report` sums up.

  Attributes:
    config: the validated experiment config.
    workdir: the absolute workdir, which this process holds (`workdir_lib.exclusive`).
    task: the task, prepared for the dataset (`Task.prepare`).
    mesh: every device of every process.
    model: the task's model.
    compiled: the compiled train and eval steps.
    state: the train state at `step`, in `compiled`'s train layout; `train` takes it over (its
      first step donates the buffers under `jit`) and leaves None.
    step: the step the run starts from: the restored checkpoint's, or 0.
    total_steps: the step it ends at.
    schedule: the learning rate of each step (logged).
    train_batches: this process's share of the training batches, from `step + 1` on.
    eval_source: the eval split.
    ckpt: the workdir's checkpoints.
    writer: `metrics.jsonl`, TensorBoard (and W&B) on process 0.
  """
  config: ml_collections.ConfigDict
  workdir: str
  task: tasks.Task
  mesh: jax.sharding.Mesh
  model: nn.Module
  compiled: steps.CompiledSteps
  state: Any
  step: int
  total_steps: int
  schedule: Callable[[int], Any]
  train_batches: Iterator[dict]
  eval_source: Any
  ckpt: checkpoint.Checkpointer
  writer: metric_writer.MetricWriter

  def close(self) -> None:
    """Finishes pending saves and closes the metric files."""
    self.ckpt.close()
    self.writer.close()


def setup(config: ml_collections.ConfigDict, workdir: str, task: tasks.Task) -> Run:
  """Opens the data, builds the model, its state and compiled steps, for a validated config
  and a workdir this process holds (as `train_and_evaluate` calls it).

  Refuses a config that changes what the workdir trains before anything is written; resumes
  from the newest intact checkpoint if there is one; records the config.
  """
  cache = startup.use_compilation_cache(config.train.compilation_cache)
  changes = workdir_lib.config_changes(workdir_lib.read_saved_config(workdir), config)
  if workdir_lib.identity_changes(changes) and workdir_lib.has_checkpoints(workdir):
    workdir_lib.refuse_changes(workdir, changes, [])  # Before even opening the dataset.
  mesh = sharding.make_mesh(fsdp=config.parallel.fsdp)
  builder, image_shape, train_source, eval_source = _open_data(config, task)
  total_steps = _total_steps(config, len(train_source))
  os.makedirs(workdir, exist_ok=True)  # Other processes than 0 (which took the lock).
  task = task.prepare(builder, train_source, workdir)

  model = task.build_model(config, builder)
  if config.parallel.strategy == "pmap" and hasattr(model, "bn_axis_name"):
    model = model.clone(bn_axis_name=sharding.PMAP_AXIS)  # Global-batch BatchNorm, as jit.
  init, abstract = train_state_initializer(
      model, optim.make_optimizer(config.optim, total_steps), image_shape, mesh,
      use_ema=config.train.ema_decay > 0, init_inputs=task.init_inputs(image_shape))
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
    # Lowers the forward pass: only where it is printed.
    _say(startup.describe(config, model, abstract, task, image_shape, len(train_source),
                          len(eval_source), total_steps, cache))
  writer = metric_writer.MetricWriter(workdir, start_step=step,
                                      wandb_project=config.train.wandb_project,
                                      config=config.to_dict())
  compiled = steps.compile_steps(
      mesh, state, task, strategy=config.parallel.strategy, ema_decay=config.train.ema_decay,
      grad_accum_steps=config.train.grad_accum_steps, eval_flip=config.train.eval_flip)
  train_batches = pipeline.train_batches(
      train_source, pipeline.InputOptions.from_config(config.input), seed=config.seed,
      start_step=step, keys=task.keys, kinds=task.feature_kinds,
      example_fn=task.example_transform)
  return Run(config=config, workdir=workdir, task=task, mesh=mesh, model=model,
             compiled=compiled, state=compiled.to_train_layout(state), step=step,
             total_steps=total_steps,
             schedule=optim.learning_rate_schedule(config.optim, total_steps),
             train_batches=train_batches, eval_source=eval_source, ckpt=ckpt, writer=writer)


def _open_data(config: ml_collections.ConfigDict, task: tasks.Task):
  """`(builder, image_shape, train_source, eval_source)`: the dataset checked for the task, and
  the (H, W, C) of the model's input images (checked against the config before any split is
  read)."""
  builder = datasets.builder_from_config(config.dataset)
  task.check_dataset(builder)
  info = datasets.info(builder)
  channels = builder.info.features["image"].shape[-1]
  size = config.input.image_size
  image_shape = info.image_shape if size is None else (size, size, channels)
  if image_shape is None:
    raise errors.UserError(f"Dataset {info.name!r} has images of varying size; set "
                           "config.input.image_size.")
  config_lib.validate_image_shape(config, image_shape, type(task))
  train_source, eval_source = (
      datasets.open_split(builder, split, keys=task.dataset_keys(),
                          in_memory=config.dataset.in_memory)
      for split in (config.dataset.train_split, config.dataset.eval_split))
  return builder, image_shape, train_source, eval_source


def train(run: Run) -> dict:
  """Trains `run` to its last step: logs, evaluates, saves and stops on SIGTERM as the config
  says (`train.log_every`, `eval_every`, `checkpoint_every`; always at the last step).

  Returns:
    The last eval metrics, plus `step` and `preempted`.
  """
  config, step = run.config, run.step
  train_state, run.state = run.state, None  # Donated to the first step under jit.
  bar = tqdm.tqdm(total=run.total_steps, initial=step, unit="step", dynamic_ncols=True,
                  disable=not (jax.process_index() == 0 and config.train.progress_bar))
  pending, eval_metrics, preempted = [], {}, False
  since = (time.perf_counter(), step)  # Of the last train metrics written.
  profiler = startup.Profiler(config.train.profile_steps, os.path.join(run.workdir, "profile"))
  try:
    with _Preemption() as preemption:
      while step < run.total_steps:
        profiler.before(step + 1)
        train_state, metrics = run.compiled.train(train_state, next(run.train_batches))
        pending.append(metrics)
        step += 1
        profiler.after(step, train_state)
        preempted = preemption.reached(step)
        do_eval = step == run.total_steps or step % config.train.eval_every == 0
        do_save = do_eval or step % config.train.checkpoint_every == 0 or preempted
        if do_save or step % config.train.log_every == 0:
          since = _write_train_metrics(run, pending, step, since, bar)
          pending = []
        bar.update(1)
        if do_save:  # Refuses a NaN/inf state or eval metric: the last good one stays.
          # Global arrays (a view under jit; pmap's per-device copies gathered once).
          global_state = run.compiled.to_global(train_state)
          if do_eval:
            eval_metrics = _evaluate_and_write(run, global_state, step, bar)
          run.ckpt.save(step, global_state, metrics=eval_metrics if do_eval else None)
          del global_state  # Under jit the next step donates these buffers.
        if preempted:
          bar.write(f"SIGTERM: saved a checkpoint at step {step}; rerun the same command to "
                    "resume.")
          break
  finally:
    profiler.close()
    bar.close()
  return {**eval_metrics, "step": step, "preempted": preempted}


def _write_train_metrics(run: Run, pending: list[dict], step: int, since: tuple[float, int],
                         bar: tqdm.tqdm) -> tuple[float, int]:
  """Checks (raises on NaN, before any save) and writes the means of the `pending` train
  metrics, with throughput since `since` (time, step); returns the new `since`."""
  metrics = _check_metrics(pending, step, run.ckpt)
  now = time.perf_counter()
  metrics["images_per_sec"] = (step - since[1]) * run.config.input.batch_size / (now - since[0])
  metrics["learning_rate"] = float(run.schedule(step))
  run.writer.write(step, "train", metrics)
  bar.set_postfix(loss=f"{metrics['loss']:.4f}", img_s=f"{metrics['images_per_sec']:.0f}")
  return now, step


def _evaluate_and_write(run: Run, global_state, step: int, bar: tqdm.tqdm) -> dict:
  """Every evaluator of the task at `step` (on every process: they are collective), once each;
  writes the metrics and pictures and prints the summary. Returns the metrics."""
  task = run.task
  metrics = (evaluate(run.compiled.evaluate, global_state, run.config, run.eval_source, task)
             if task.summed_eval else {})
  context = tasks.EvalContext(
      model=run.model, variables=global_state.eval_variables(), config=run.config,
      eval_source=run.eval_source, mesh=run.mesh, workdir=run.workdir, step=step)
  metrics.update(task.evaluate_extra(context))
  if global_state.ema_params is not None:  # The live weights too, as `raw/<metric>` (summed
    # metrics only; `best_metric` ranks the EMA's).
    raw = evaluate(run.compiled.evaluate_raw, global_state, run.config, run.eval_source, task)
    metrics.update({f"raw/{k}": v for k, v in raw.items()})
  run.writer.write(step, "eval", metrics)
  if picture := task.draw_pictures(context):
    run.writer.write_image(step, f"eval/{task.picture_dir}", picture)
  if jax.process_index() == 0:
    raw_metric = f"raw/{task.curve_metric}"
    raw_line = (f"; raw weights {task.curve_metric} {metrics[raw_metric]:.4f}"
                if raw_metric in metrics else "")
    bar.write(f"step {step}: eval {task.summary(metrics)}{raw_line}")
  return metrics


def report(run: Run, step: int) -> str:
  """Plots the curves (also sent to TensorBoard at `step`, the last), tells the user where
  everything is, and returns the plot's path. Process 0 only."""
  config, workdir = run.config, run.workdir
  metrics_path = os.path.join(workdir, metric_writer.METRICS_FILE)
  plot = curves.plot_training_curves(metric_writer.read_jsonl(metrics_path),
                                     os.path.join(workdir, "curves.png"),
                                     title=f"{config.model.name} on {config.dataset.name}",
                                     metrics=("loss", run.task.curve_metric))
  run.writer.write_image(step, "curves", plot)
  print(f"Done. Workdir: {workdir}\n"
        f"  metrics:     {metrics_path}\n"
        f"  tensorboard: tensorboard --logdir {os.path.join(workdir, 'tensorboard')}\n"
        f"  checkpoints: {os.path.join(workdir, 'checkpoints')}\n"
        f"  curves:      {plot}")
  return plot
