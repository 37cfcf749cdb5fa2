"""Weight I/O in one place: model variables out of checkpoints and converted files, and into a
fresh train state.

Variables are `{"params", "batch_stats"}` of host NumPy arrays. They come from a training
workdir's Orbax checkpoints (`restore_variables`: only those subtrees, verified against the
fingerprints saved beside them, on any device count) or from a directory written by the
torchvision converter (`save_converted` / `load_converted`). `read_weights` takes either;
`load_pretrained` puts them into a freshly initialised train state (`config.model.init_from`).
"""

import os
import sys
from typing import Any
from collections.abc import Mapping

from etils import epath
from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from vision_jax import errors
from vision_jax.train import checkpoint
from vision_jax.train.state import TrainState

def checkpoint_step(directory: str, step: int | None) -> int:
  """`step`, checked to exist, or the latest complete checkpoint in `directory`."""
  # Finalised step directories only: Orbax renames a step's temporary directory when complete.
  steps = sorted(ocp.utils.checkpoint_steps(directory)) if os.path.isdir(directory) else []
  if not steps:
    raise errors.MissingFileError(f"No checkpoint in {directory!r}; train (or resume) first.")
  if step is None:
    return steps[-1]
  if step not in steps:
    raise errors.UserError(f"No checkpoint at step {step} in {directory!r}; valid choices: "
                           f"{steps}")
  return step


def restore_variables(directory: str, step: int) -> dict:
  """Restores `{"params", "batch_stats"}` of one checkpoint as numpy arrays, verified.

  Only those subtrees (and `ema_params`) are read: `partial_restore` skips the optimiser state,
  the step and the rng key, and `restore_type=np.ndarray` ignores the shardings they were saved
  with, so any device count works. Their fingerprints are checked against the saved ones.

  Args:
    directory: the `checkpoints/` folder of a workdir.
    step: which checkpoint.

  Returns:
    The variables to evaluate with: EMA parameters when the run kept them, else the live ones.

  Raises:
    checkpoint.DamagedCheckpointError: when the checkpoint cannot be read or does not verify.
  """
  step_dir = epath.Path(directory) / str(step)
  try:
    saved = ocp.PyTreeCheckpointHandler().metadata(step_dir / checkpoint.STATE_ITEM).tree  # No data.
    wanted = {k: saved[k] for k in ("params", "batch_stats", "ema_params")}
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), wanted)
    with ocp.Checkpointer(ocp.PyTreeCheckpointHandler()) as checkpointer:
      restored = checkpointer.restore(step_dir / checkpoint.STATE_ITEM, args=ocp.args.PyTreeRestore(
          item=wanted, restore_args=restore_args, partial_restore=True))
  except Exception as e:  # noqa: BLE001  Whatever Orbax/TensorStore raise on bad files.
    raise checkpoint.DamagedCheckpointError(
        f"Checkpoint {step} in {directory} is damaged: {checkpoint.one_line(e)}") from e
  problem = checkpoint.fingerprint_problem(
      {k: v for k, v in restored.items() if v is not None}, checkpoint.read_meta(str(step_dir)))
  if problem:
    raise checkpoint.DamagedCheckpointError(
        f"Checkpoint {step} in {directory} is damaged: {problem}")
  params = restored["params"] if restored["ema_params"] is None else restored["ema_params"]
  return {"params": params, "batch_stats": restored["batch_stats"] or {}}


def restore_newest_variables(directory: str, step: int | None = None) -> tuple[int, dict]:
  """`(step, restore_variables(...))` of checkpoint `step`, or of the newest intact one.

  With `step` None, a damaged newer checkpoint is skipped with a warning (nothing is moved:
  inference only reads).
  """
  if step is not None:
    return step, restore_variables(directory, checkpoint_step(directory, step))
  steps = sorted(ocp.utils.checkpoint_steps(directory)) if os.path.isdir(directory) else []
  if not steps:
    checkpoint_step(directory, None)  # Raises the missing-checkpoint error.
  for candidate in reversed(steps):
    try:
      return candidate, restore_variables(directory, candidate)
    except checkpoint.DamagedCheckpointError as e:
      print(f"Warning: {e}; trying an older one.", file=sys.stderr)
  raise checkpoint.DamagedCheckpointError(f"No intact checkpoint in {directory}.")


def read_weights(path: str) -> dict:
  """`{"params", "batch_stats"}` (numpy) to start training from (`config.model.init_from`).

  Args:
    path: a directory written by `python -m vision_jax.tools.torch_import`, or a training
      workdir (its newest checkpoint's weights: the EMA ones when the run kept them).

  Raises:
    errors.UserError: when `path` is neither.
  """
  path = os.path.abspath(path)
  checkpoints = os.path.join(path, "checkpoints")
  if os.path.isfile(os.path.join(path, "config.json")) and os.path.isdir(checkpoints):
    return restore_newest_variables(checkpoints)[1]
  if os.path.isfile(os.path.join(path, "_METADATA")):
    return load_converted(path)
  raise errors.UserError(
      f"config.model.init_from={path!r} is neither a training workdir (config.json and "
      "checkpoints/) nor a directory written by `python -m vision_jax.tools.torch_import`.")


def save_converted(variables: Mapping[str, Any], directory: str) -> None:
  """Saves `{"params", "batch_stats"}` as an orbax checkpoint; `directory` must not exist."""
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(os.path.abspath(directory), dict(variables))
  checkpointer.wait_until_finished()


def load_converted(directory: str) -> dict[str, Any]:
  """Reads variables written by `save_converted`: `{"params", "batch_stats"}` of NumPy arrays."""
  variables = ocp.StandardCheckpointer().restore(os.path.abspath(directory))
  return {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}


# Models that wrap a registry backbone (FCN) keep its parameters under this prefix.
BACKBONE_PREFIX = "backbone/"


def load_pretrained(state: TrainState, variables: dict) -> tuple[TrainState, list[str]]:
  """Starts from pretrained weights: every parameter and BatchNorm statistic whose path and
  shape match is replaced; the rest keep their fresh initialisation. A path under `backbone/`
  also matches the same path without it, so a classifier's weights start an FCN's backbone.

  Args:
    state: a freshly created train state.
    variables: `{"params", "batch_stats"}` (numpy), e.g. from
      `load_converted`.

  Returns:
    The state (arrays placed with the old ones' shardings; the EMA restarts from the new
    parameters) and the paths that kept their initialisation (e.g. `params/head/kernel` when the
    class count differs).

  Raises:
    errors.UserError: when not one kernel (rank >= 2) matches: weights of another architecture.
  """
  kept = []

  def overlay(collection: str, tree):
    loaded = traverse_util.flatten_dict(variables.get(collection) or {}, sep="/")
    flat = traverse_util.flatten_dict(tree, sep="/")
    for path, leaf in flat.items():
      new = loaded.get(path)
      if new is None and path.startswith(BACKBONE_PREFIX):  # A classifier's weights in an FCN.
        new = loaded.get(path[len(BACKBONE_PREFIX):])
      if new is None or tuple(new.shape) != tuple(leaf.shape):
        kept.append(f"{collection}/{path}")
        continue
      flat[path] = jax.device_put(jnp.asarray(new, leaf.dtype), leaf.sharding)
    return traverse_util.unflatten_dict(flat, sep="/")

  params = overlay("params", state.params)
  flat = traverse_util.flatten_dict(params, sep="/")
  if not any(leaf.ndim >= 2 and f"params/{path}" not in kept for path, leaf in flat.items()):
    names = list(traverse_util.flatten_dict(variables.get("params") or {}, sep="/"))[:3]
    raise errors.UserError(
        "Not one weight kernel of the model matches the pretrained weights (by path and "
        f"shape): they are of another architecture (they hold e.g. {names}). Set "
        "config.model.init_from to weights of this model, or train it from scratch.")
  batch_stats = overlay("batch_stats", state.batch_stats) if state.batch_stats else {}
  ema = None if state.ema_params is None else jax.tree.map(jnp.copy, params)
  return state.replace(params=params, batch_stats=batch_stats, ema_params=ema), kept

