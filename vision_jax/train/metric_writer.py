"""Writes scalar metrics to `metrics.jsonl` and TensorBoard event files (no TensorFlow needed).

Only JAX process 0 writes; the other processes get a writer that does nothing, so call sites
need no `if jax.process_index() == 0`.
"""

import json
import os
import time

import jax
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.event_file_writer import EventFileWriter


class MetricWriter:
  """Appends `{"step", "split", **metrics}` lines to `metrics.jsonl` and TensorBoard scalars.

  Args:
    workdir: the run's directory; events go to `workdir/tensorboard`.
    start_step: the step a resumed run starts from: TensorBoard is told to drop the events an
      earlier, killed run wrote after it (they are written again).
  """

  def __init__(self, workdir: str, start_step: int = 0):
    self._enabled = jax.process_index() == 0
    if not self._enabled:
      return
    self.jsonl_path = os.path.join(workdir, "metrics.jsonl")
    self._jsonl = open(self.jsonl_path, "a")
    self._events = EventFileWriter(os.path.join(workdir, "tensorboard"))
    if start_step:  # TensorBoard purges older events at steps >= a START session log's step.
      self._events.add_event(event_pb2.Event(
          wall_time=time.time(), step=start_step + 1,
          session_log=event_pb2.SessionLog(status=event_pb2.SessionLog.START)))

  def write(self, step: int, split: str, metrics: dict) -> None:
    """Records scalars under `split/name` at `step`."""
    if not self._enabled:
      return
    record = {"step": step, "split": split, **{k: float(v) for k, v in metrics.items()}}
    self._jsonl.write(json.dumps(record) + "\n")
    self._jsonl.flush()
    values = [summary_pb2.Summary.Value(tag=f"{split}/{k}", simple_value=float(v))
              for k, v in metrics.items()]
    self._events.add_event(event_pb2.Event(wall_time=time.time(), step=step,
                                           summary=summary_pb2.Summary(value=values)))
    self._events.flush()

  def close(self) -> None:
    """Flushes and closes both files."""
    if self._enabled:
      self._jsonl.close()
      self._events.close()


def read_jsonl(path: str) -> list[dict]:
  """Reads back every complete record of a `metrics.jsonl` ([] when there is none).

  A line cut short (the run was killed while writing it) is skipped.
  """
  if not os.path.exists(path):
    return []
  records = []
  with open(path) as f:
    for line in f:
      try:
        records.append(json.loads(line))
      except ValueError:
        continue
  return records
