"""What a run sets up around its steps: the compilation cache, the start-up report, profiling."""

import os

import jax

from vision_jax import tasks
from vision_jax.train.state import example_inputs


def use_compilation_cache(directory: str) -> str | None:
  """Turns on JAX's persistent compilation cache in `directory` ("" leaves it off).

  The environment (`JAX_COMPILATION_CACHE_DIR`) or an earlier `jax.config` setting wins, so tests
  and users who chose a cache keep theirs.

  Returns:
    The cache directory in use, or None.
  """
  chosen = os.environ.get("JAX_COMPILATION_CACHE_DIR") or jax.config.jax_compilation_cache_dir
  if chosen or not directory:
    return chosen or None
  directory = os.path.expanduser(directory)
  jax.config.update("jax_compilation_cache_dir", directory)
  # Also keep programs that compile in under JAX's default second (most steps of small models).
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
  return directory


def count_parameters(abstract_state) -> int:
  """Trainable parameters of a (possibly abstract) train state."""
  return sum(x.size for x in jax.tree.leaves(abstract_state.params))


def flops_per_image(model, abstract_state, task: tasks.Task,
                    image_shape: tuple[int, ...]) -> float | None:
  """XLA's estimate of one image's inference forward pass (a multiply-add counts 2), or None.

  Read from the lowered program, so nothing is compiled or allocated.
  """
  variables = {"params": abstract_state.params, "batch_stats": abstract_state.batch_stats}
  inputs = jax.eval_shape(lambda: example_inputs(image_shape, task.init_inputs(image_shape)))
  forward = jax.jit(lambda v, *x: model.apply(v, *x, train=False))
  cost = forward.lower(variables, *inputs).cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost["flops"]) if cost and "flops" in cost else None


def describe(config, model, abstract_state, task: tasks.Task, image_shape: tuple[int, ...],
             num_train: int, num_eval: int, total_steps: int, cache: str | None) -> str:
  """The start-up report: model size and cost, devices and processes, data, cache."""
  flops = flops_per_image(model, abstract_state, task, image_shape)
  devices = jax.devices()
  return "\n".join([
      f"Model {config.model.name} ({config.task}): {count_parameters(abstract_state):,} "
      "parameters, " + (f"{flops / 1e9:.3f} GFLOPs per image" if flops else "FLOPs unknown")
      + f" at {'x'.join(map(str, image_shape))}, {config.model.dtype}",
      f"Devices: {len(devices)} x {devices[0].device_kind} over {jax.process_count()} "
      f"process(es); strategy {config.parallel.strategy}, fsdp {config.parallel.fsdp}",
      f"Data: {config.dataset.name}: {num_train:,} train / {num_eval:,} eval examples; batch "
      f"{config.input.batch_size}, {total_steps:,} steps",
      f"Compilation cache: {cache or 'off'}",
  ])


class Profiler:
  """Writes a `jax.profiler` trace of steps `first..last` (`config.train.profile_steps`).

  Call `before(step)` before running step `step` and `after(step, state)` after it; the trace
  lands in `directory/plugins/profile/<time>/`: `*.xplane.pb` for TensorBoard's profile tab
  (with `tensorboard-plugin-profile`) and `perfetto_trace.json.gz` for ui.perfetto.dev.
  """

  def __init__(self, steps: tuple, directory: str):
    self._first, self._last = tuple(steps) if steps else (None, None)
    self._directory = directory
    self._active = False

  def before(self, step: int) -> None:
    if step == self._first:
      jax.profiler.start_trace(self._directory, create_perfetto_trace=True)
      self._active = True

  def after(self, step: int, state) -> None:
    if self._active and step >= self._last:
      jax.block_until_ready(state)  # The traced steps' device work, not only their dispatch.
      jax.profiler.stop_trace()
      self._active = False

  def close(self) -> None:
    """Ends a trace cut short (the run stopped inside the traced steps)."""
    if self._active:
      jax.profiler.stop_trace()
      self._active = False
