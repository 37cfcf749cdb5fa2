"""Orbax checkpoints of the train state that survive crashes, damage and diverging runs.

- **Atomic and asynchronous**: Orbax writes a step into a temporary directory and renames it when
  complete (a half-written step is never seen), while training goes on.
- **Verified**: each checkpoint carries, beside the state, a small `meta` item: a fingerprint
  of every array (an exact, order-independent sum of its bits, the same on any topology) and the
  eval metrics of that step. A restore recomputes the fingerprints, so silent damage (zeroed or
  changed bytes) is caught, not only unreadable files.
- **Never a bad state**: `save` refuses a state with a NaN/inf array; the loop also refuses
  to save after non-finite metrics, and sets aside a checkpoint whose state later proves to give
  a non-finite loss (`set_aside`).
- **Retention that keeps the last good checkpoint**: kept are the newest `keep` confirmed ones,
  the best by an eval metric (persisted in `meta`, so it survives restarts), and every newer one
  not yet confirmed. A checkpoint is confirmed good once the loss computed from its state
  (the next step's) is finite (`confirm`); only then may an older one be deleted.
- **Damage falls back**: `restore_newest_intact` walks back from the newest checkpoint to the
  newest one that reads and verifies, and moves the damaged ones aside (never deletes them).

The data position needs no saving: it is a function of the step (see `vision_jax.data.pipeline`).
Restoring onto another topology (other device or process counts, `jit` or `pmap`) re-shards the
arrays on the way in.
"""

import dataclasses
import json
import math
import os
import shutil
import time

from etils import epath
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

STATE_ITEM, META_ITEM = "state", "meta"  # Item names inside a step directory.
_LOWER_IS_BETTER = ("loss",)
# Multiplier of the element index in a fingerprint (Knuth's multiplicative hash), so that moved
# elements change it too.
_POSITION_HASH = np.uint32(2654435761)


class DamagedCheckpointError(RuntimeError):
  """No checkpoint in a directory that has some could be read and verified."""


class StructureMismatchError(ValueError):
  """A checkpoint holds a state of another structure than the one asked for.

  Attributes:
    step: the checkpoint's step.
    differences: one line per differing array (`path: saved ... , now ...`).
  """

  def __init__(self, step: int, differences: list[str]):
    self.step, self.differences = step, differences
    super().__init__(f"Checkpoint {step} holds a state of another structure: "
                     + "; ".join(differences))


@dataclasses.dataclass(frozen=True)
class Restored:
  """What `restore_newest_intact` found.

  Attributes:
    state: the restored state, or None when there was no checkpoint.
    step: its step, or None.
    set_aside: `(step, reason, new path)` of each damaged newer checkpoint moved aside.
  """
  state: object
  step: int | None
  set_aside: tuple[tuple[int, str, str], ...] = ()


def _bits(x: jax.Array) -> jax.Array:
  """The array's raw bits as uint32 words (64-bit values give two words each)."""
  if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    x = jax.random.key_data(x)
  if x.dtype == jnp.bool_:
    x = x.astype(jnp.uint8)
  width = x.dtype.itemsize * 8
  if width == 64:
    return jax.lax.bitcast_convert_type(x, jnp.uint32)
  return jax.lax.bitcast_convert_type(x, jnp.dtype(f"uint{width}")).astype(jnp.uint32)


@jax.jit
def _fingerprints_and_finite(leaves: list) -> tuple[list, jax.Array]:
  """Per leaf: sum of bits × (position hash + 1) mod 2³²; and whether all floats are finite.

  Integer sums wrap exactly and in any order, so the value does not depend on how the array is
  sharded or on the number of devices or processes.
  """
  prints, finite = [], jnp.bool_(True)
  for x in leaves:
    words = _bits(x).reshape(-1)
    weights = jnp.arange(words.size, dtype=jnp.uint32) * _POSITION_HASH + jnp.uint32(1)
    prints.append(jnp.sum(words * weights, dtype=jnp.uint32))
    if jnp.issubdtype(x.dtype, jnp.inexact):
      finite &= jnp.all(jnp.isfinite(x))
  return prints, finite


def _paths(tree) -> list[str]:
  return ["/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))))
                   for k in path) for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def _host_fingerprint(x: np.ndarray) -> int:
  """`_fingerprints_and_finite`'s value for one host array, in numpy (any dtype, x64 or not)."""
  x = np.ascontiguousarray(x)
  if x.dtype == np.bool_:
    x = x.astype(np.uint8)
  width = x.dtype.itemsize * 8
  words = x.view(np.uint32) if width == 64 else x.view(f"uint{width}").astype(np.uint32)
  words = words.reshape(-1)
  with np.errstate(over="ignore"):
    weights = np.arange(words.size, dtype=np.uint32) * _POSITION_HASH + np.uint32(1)
    return int(np.sum(words * weights, dtype=np.uint32))


def fingerprint(state) -> tuple[dict[str, int], bool]:
  """`({array path: fingerprint}, all floating arrays finite)` of a state.

  Global `jax.Array`s are fingerprinted where they live (one jitted computation over every
  process); numpy arrays on the host, which also works for float64 without JAX's 64-bit mode.
  """
  leaves = jax.tree.leaves(state)
  if all(isinstance(x, np.ndarray) for x in leaves):
    prints = [_host_fingerprint(x) for x in leaves]
    finite = all(np.isfinite(x).all() for x in leaves if np.issubdtype(x.dtype, np.inexact))
  else:
    prints, finite = jax.device_get(_fingerprints_and_finite(leaves))
  return dict(zip(_paths(state), (int(p) for p in prints), strict=True)), bool(finite)


def _structure(tree) -> dict[str, tuple[tuple[int, ...], str]]:
  """{path: (shape, dtype)} of arrays, `ShapeDtypeStruct`s or Orbax array metadata."""
  def describe(x):
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):  # Saved as its raw key data.
      x = jax.eval_shape(jax.random.key_data, jax.ShapeDtypeStruct(x.shape, x.dtype))
    return tuple(x.shape), str(x.dtype)
  leaves = jax.tree.leaves(tree)
  return dict(zip(_paths(tree), (describe(x) for x in leaves), strict=True))


def structure_differences(saved, wanted) -> list[str]:
  """Arrays that differ between two state structures (missing, extra, other shape or dtype)."""
  saved, wanted = _structure(saved), _structure(wanted)
  out = []
  for path in sorted(set(saved) | set(wanted), key=lambda p: (not p.startswith("params"), p)):
    old, new = saved.get(path), wanted.get(path)
    if old == new:
      continue
    show = lambda s: "absent" if s is None else f"{s[0]} {s[1]}"  # noqa: E731
    out.append(f"{path}: saved {show(old)}, now {show(new)}")
  return out


def read_meta(step_dir: str) -> dict | None:
  """A checkpoint's `meta` item (fingerprints, eval metrics); {} when written before it existed.

  Returns:
    The meta dict, {} for a checkpoint without one, None when it exists but cannot be read.
  """
  path = epath.Path(step_dir) / META_ITEM / "metadata"
  if not (epath.Path(step_dir) / META_ITEM).exists():
    return {}
  try:
    return json.loads(path.read_text())
  except (OSError, ValueError):
    return None


def fingerprint_problem(tree, meta: dict | None) -> str | None:
  """Why the arrays of `tree` (a state or a part of one) are not what was saved, or None.

  Args:
    tree: arrays at the same paths as in the saved state (e.g. `{"params": ...}`).
    meta: `read_meta` of the checkpoint they were read from.
  """
  if meta is None:
    return "its meta item is unreadable"
  if not meta:
    return None  # Written before fingerprints existed: taken as it is.
  prints, _ = fingerprint(tree)
  changed = [p for p, v in prints.items() if meta["fingerprints"].get(p) != v]
  if changed:
    return f"{len(changed)} array(s) differ from what was saved, e.g. {changed[0]}"
  return None


def _all_processes_agree(ok: bool) -> bool:
  """True when `ok` holds on every process (one small all-gather when there are several)."""
  if jax.process_count() == 1:
    return ok
  return bool(np.all(multihost_utils.process_allgather(np.asarray(ok))))


def _sync(name: str) -> None:
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


class Checkpointer:
  """Saves, verifies, retains and restores train states in one directory.

  Args:
    directory: where step directories go (absolute path).
    keep: how many confirmed recent checkpoints to keep (at least 1).
    best_metric: eval metric name that ranks checkpoints; the best one is kept too.
    lower_is_better: whether a lower `best_metric` is better; None: only for `loss`.
    aside_directory: where damaged or bad checkpoints are moved; default `<directory>_set_aside`.
  """

  def __init__(self, directory: str, *, keep: int, best_metric: str,
               lower_is_better: bool | None = None, aside_directory: str | None = None):
    self._directory = directory
    self._aside = aside_directory or directory.rstrip("/") + "_set_aside"
    self._keep = max(1, keep)
    self._best_metric = best_metric
    self._lower_is_better = (best_metric in _LOWER_IS_BETTER if lower_is_better is None
                             else lower_is_better)
    # Keeps every step (pruning is ours); drops the temporary directories of saves a kill cut
    # short (the run holds the workdir, so no other save is in flight).
    options = ocp.CheckpointManagerOptions(create=True, enable_async_checkpointing=True,
                                           cleanup_tmp_directories=True)
    self._manager = ocp.CheckpointManager(directory, options=options)
    self._metrics = {step: (read_meta(str(self._step_dir(step))) or {}).get("metrics") or {}
                     for step in self.all_steps()}
    # Checkpoints up to this step are confirmed good (older runs confirmed theirs).
    self._confirmed_through = (self.all_steps() or [0])[-1] - 1

  # --- Reading ---------------------------------------------------------------------------

  def latest_step(self) -> int | None:
    """The newest complete checkpoint's step, or None."""
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    """Steps of every kept checkpoint, oldest first."""
    return sorted(self._manager.all_steps())

  def _best(self, steps: list[int]) -> int | None:
    """The one of `steps` with the best `best_metric`, or None when none has it."""
    ranked = [(m, s) for s in steps
              if isinstance(m := self._metrics.get(s, {}).get(self._best_metric), (int, float))
              and math.isfinite(m)]
    if not ranked:
      return None
    return (min if self._lower_is_better else max)(ranked)[1]

  def _step_dir(self, step: int) -> epath.Path:
    return epath.Path(self._directory) / str(step)

  def saved_structure(self, step: int):
    """The saved state's tree of array metadata (shapes, dtypes); reads no array data."""
    return ocp.PyTreeCheckpointHandler().metadata(self._step_dir(step) / STATE_ITEM).tree

  # --- Writing ---------------------------------------------------------------------------

  def save(self, step: int, state, metrics: dict | None = None) -> None:
    """Starts an asynchronous save of `state` (global arrays) at `step`.

    Args:
      step: the step the state is at.
      state: the train state (global arrays).
      metrics: this step's eval metrics, if it was evaluated (ranks the best checkpoint).

    Raises:
      FloatingPointError: when an array of `state` or a metric is NaN or infinite; nothing is
        written.
    """
    prints, finite = fingerprint(state)
    bad_metrics = {k: v for k, v in (metrics or {}).items() if not math.isfinite(float(v))}
    if not finite or bad_metrics:
      what = f"eval metrics {bad_metrics}" if bad_metrics else "parameters or optimizer state"
      raise FloatingPointError(f"Non-finite {what} at step {step}: not saved, so the last "
                               "good checkpoint is kept.")
    metrics = {k: float(v) for k, v in (metrics or {}).items()}
    meta = {"step": step, "metrics": metrics, "fingerprints": prints}
    self._manager.save(step, args=ocp.args.Composite(
        **{STATE_ITEM: ocp.args.StandardSave(state), META_ITEM: ocp.args.JsonSave(meta)}), force=True)
    self._metrics[step] = metrics

  def confirm(self, step: int) -> None:
    """Marks every checkpoint up to `step` good, then deletes those retention lets go.

    Call it once the loss computed from the state at `step` (step `step + 1`'s) was finite.
    """
    self._confirmed_through = max(self._confirmed_through, step)
    confirmed = [s for s in self.all_steps() if s <= self._confirmed_through]
    retained = set(confirmed[-self._keep:]) | {self._best(confirmed)}
    for step_ in confirmed:
      if step_ not in retained:
        self._manager.delete(step_)
        self._metrics.pop(step_, None)

  def set_aside(self, first_bad_step: int, reason: str) -> list[str]:
    """Moves every checkpoint at or after `first_bad_step` aside (a state that gave NaN/inf).

    Returns:
      The new paths of the moved checkpoints.
    """
    self.wait()
    moved = [self._move_aside(s, reason) for s in self.all_steps() if s >= first_bad_step]
    _sync("vision_jax_set_aside")
    self._manager.reload()
    return moved

  def _move_aside(self, step: int, reason: str) -> str:
    """Moves one step directory out of Orbax's sight (process 0 moves, everyone gets the path)."""
    target = os.path.join(self._aside, f"{step}.{reason}.{time.strftime('%Y%m%d-%H%M%S')}")
    if jax.process_index() == 0:
      os.makedirs(self._aside, exist_ok=True)
      suffix, base = 1, target
      while os.path.exists(target):
        suffix, target = suffix + 1, f"{base}.{suffix}"
      shutil.move(str(self._step_dir(step)), target)
    self._metrics.pop(step, None)
    return target

  # --- Restoring -------------------------------------------------------------------------

  def _read(self, step: int, abstract_state):
    """Reads checkpoint `step` onto the shardings of `abstract_state` (a pytree of
    `jax.ShapeDtypeStruct`s: restoring onto it re-shards to whatever devices this run has);
    this process's shards. Raises `StructureMismatchError` for a state of another structure (a
    changed model, optimizer, EMA setting, ...), anything else on unreadable files."""
    differences = structure_differences(self.saved_structure(step), abstract_state)
    if differences:
      raise StructureMismatchError(step, differences)
    return self._manager.restore(step, args=ocp.args.Composite(
        **{STATE_ITEM: ocp.args.StandardRestore(abstract_state)}))[STATE_ITEM]

  def _verify(self, step: int, state) -> str | None:
    """Why a read state is not the saved one, or None (a global computation: all processes)."""
    return fingerprint_problem(state, read_meta(str(self._step_dir(step))))

  def restore_newest_intact(self, abstract_state) -> Restored:
    """Restores the newest checkpoint that reads and verifies; damaged newer ones move aside.

    Every process reads its shards, then all agree whether that worked before the (collective)
    verification, so a read error on one host cannot leave the others waiting.

    Raises:
      StructureMismatchError: the newest readable checkpoint holds another structure.
      DamagedCheckpointError: there are checkpoints, but none is intact (nothing is moved).
    """
    damaged = []
    for step in reversed(self.all_steps()):
      try:
        state, problem = self._read(step, abstract_state), None
      except StructureMismatchError:
        raise
      except Exception as e:  # noqa: BLE001  Whatever Orbax/TensorStore raise on bad files.
        state, problem = None, one_line(e)
      if not _all_processes_agree(problem is None):
        damaged.append((step, problem or "unreadable on another process"))
        continue
      if problem := self._verify(step, state):
        damaged.append((step, problem))
        continue
      moved = tuple((s, why, self._move_aside(s, "damaged")) for s, why in damaged)
      if moved:
        _sync("vision_jax_damaged_aside")
        self._manager.reload()
      self._confirmed_through = step - 1
      return Restored(state, step, moved)
    if damaged:
      listing = "; ".join(f"step {s}: {why}" for s, why in damaged)
      raise DamagedCheckpointError(
          f"No intact checkpoint in {self._directory} ({listing}). Nothing was moved or "
          "deleted. Move the damaged step directories away to start from scratch, or use a "
          "new --workdir.")
    return Restored(None, None)

  def wait(self) -> None:
    """Blocks until pending asynchronous saves are on disk."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    """Waits for pending saves and releases the manager's resources."""
    self._manager.close()


def one_line(error: BaseException, limit: int = 200) -> str:
  """The first line of an exception's message, shortened (Orbax errors run to pages)."""
  text = str(error).strip().split(" See full TensorStore details")[0].splitlines()
  line = f"{type(error).__name__}: {text[0] if text else ''}"
  return line if len(line) <= limit else line[:limit - 3] + "..."
