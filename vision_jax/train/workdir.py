"""A workdir is a contract: its `config.json` says what was trained there.

A rerun compares its config with the saved one before anything in the workdir is written.
Changes that keep the train state's structure and the run's identity (learning rate, step
counts, cadences, batch size, augmentation, ...) are accepted, printed and appended to
`config_changes.jsonl`; a change of task, model or dataset, or one that changes the state
(a layer's width, the optimizer, EMA on/off, the class count, ...) is refused with the list of
changed fields and the ways forward. `metrics.jsonl` is cut back to the step a run resumes from,
so that after any sequence of kills it holds exactly one record per logged step.
"""

import contextlib
import fcntl
import json
import os
import time

import ml_collections

from vision_jax import errors
from vision_jax.train import metric_writer

LOCK_FILE = ".lock"
CONFIG_FILE = "config.json"
CHANGES_FILE = "config_changes.jsonl"
# What a workdir trains: changing one of these is a new experiment, even if shapes agree.
IDENTITY_FIELDS = ("task", "model.name", "dataset.name")


@contextlib.contextmanager
def exclusive(workdir: str, is_main: bool = True):
  """Holds `workdir` for one run: a second run started on it meanwhile is refused.

  An advisory `flock` on `workdir/.lock`, taken by process 0 of a run; the kernel drops it
  when the process ends in any way (SIGKILL included), so a crashed run never leaves it held.

  Raises:
    errors.UserError: when another run holds the workdir.
  """
  if not is_main:
    yield
    return
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, LOCK_FILE), "a+") as f:
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as e:
      f.seek(0)
      raise errors.UserError(
          f"Another run is using {workdir} ({f.read().strip() or 'unknown process'}); wait "
          "for it to finish or stop it, or use another --workdir.") from e
    f.truncate(0)
    f.write(f"pid {os.getpid()} on {os.uname().nodename}\n")
    f.flush()
    yield


def read_saved_config(workdir: str) -> dict | None:
  """The config a previous run wrote into `workdir`, as a plain dict, or None."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    try:
      return json.load(f)
    except ValueError as e:
      raise errors.UserError(f"{path} is not valid JSON ({e}); restore it or use a new "
                             "--workdir.") from e


def _flatten(tree: dict, prefix: str = "") -> dict:
  """{"a.b": value} for nested dicts (an empty dict is a value)."""
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict) and value:
      out.update(_flatten(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out


def config_changes(saved: dict | None, config: ml_collections.ConfigDict) -> dict:
  """`{field: (saved value, new value)}` for every field that differs (JSON values)."""
  if saved is None:
    return {}
  old, new = _flatten(saved), _flatten(json.loads(config.to_json()))
  missing = object()
  return {k: (old.get(k), new.get(k)) for k in sorted(set(old) | set(new))
          if old.get(k, missing) != new.get(k, missing)}


def describe_changes(changes: dict) -> str:
  """`field: old → new; ...` on one line."""
  return "; ".join(f"{k}: {json.dumps(old)} → {json.dumps(new)}"
                   for k, (old, new) in changes.items())


def refuse_changes(workdir: str, changes: dict, state_differences: list[str]) -> None:
  """Raises the error for a rerun whose config changed what this workdir trains.

  Args:
    workdir: the workdir.
    changes: `config_changes` of the rerun.
    state_differences: how the checkpoint's state and the new one differ (may be empty when an
      identity field changed).

  Raises:
    errors.UserError: always.
  """
  lines = [f"{workdir} holds a run of another config; nothing in it was changed."]
  if changes:
    lines.append(f"  Changed fields: {describe_changes(changes)}")
  if state_differences:
    shown = "; ".join(state_differences[:4])
    more = len(state_differences) - 4
    lines.append(f"  The saved train state differs: {shown}" +
                 (f" (and {more} more)" if more > 0 else ""))
  lines.append(
      "  Ways forward: rerun with the saved config to resume; or train in a new --workdir; or "
      f"start a new --workdir from these weights with --config.model.init_from={workdir}")
  raise errors.UserError("\n".join(lines))


def has_checkpoints(workdir: str) -> bool:
  """Whether `workdir/checkpoints` holds a complete checkpoint (a step directory)."""
  directory = os.path.join(workdir, "checkpoints")
  return os.path.isdir(directory) and any(d.isdigit() for d in os.listdir(directory))


def identity_changes(changes: dict) -> dict:
  """The changes that make a different experiment (`IDENTITY_FIELDS`)."""
  return {k: v for k, v in changes.items() if k in IDENTITY_FIELDS}


def record_config(workdir: str, config: ml_collections.ConfigDict, changes: dict,
                  step: int) -> None:
  """Writes `config.json` and, when it changed, appends the accepted changes to the history."""
  if changes:
    with open(os.path.join(workdir, CHANGES_FILE), "a") as f:
      f.write(json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "resumed_step": step,
                          "changes": {k: {"old": o, "new": n} for k, (o, n) in
                                      changes.items()}}) + "\n")
  _atomic_write(os.path.join(workdir, CONFIG_FILE), config.to_json(indent=2))


def _atomic_write(path: str, text: str) -> None:
  """Replaces `path` with `text` all at once: a kill leaves the old file or the new one."""
  tmp = f"{path}.tmp"
  with open(tmp, "w") as f:
    f.write(text)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def truncate_records(workdir: str, step: int) -> None:
  """Keeps the records of steps up to `step` (the one a run resumes from; 0: none)."""
  path = os.path.join(workdir, metric_writer.METRICS_FILE)
  if os.path.exists(path):
    kept = [r for r in metric_writer.read_jsonl(path) if r.get("step", step + 1) <= step]
    _atomic_write(path, "".join(json.dumps(r) + "\n" for r in kept))
