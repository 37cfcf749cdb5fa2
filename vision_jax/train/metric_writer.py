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
  """

  def __init__(self, workdir: str):
    self._enabled = jax.process_index() == 0
    if not self._enabled:
      return
    self.jsonl_path = os.path.join(workdir, "metrics.jsonl")
    self._jsonl = open(self.jsonl_path, "a")
    self._events = EventFileWriter(os.path.join(workdir, "tensorboard"))

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
  """Reads back every record of a `metrics.jsonl`."""
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]
