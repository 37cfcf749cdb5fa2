"""Writes a run's metrics and pictures to a small list of sinks (no TensorFlow needed).

- `JsonlSink`: `metrics.jsonl`, one `{"step", "split", **metrics}` line per record (what resume
  cuts back and `curves.png` is drawn from); always on.
- `TensorBoardSink`: scalars as `split/name` and pictures (the task's eval pictures, the curves)
  as images, in `tensorboard/` event files written with TensorBoard's own protos; always on.
- `WandbSink`: the same to Weights & Biases, when `config.train.wandb_project` names a project
  (needs `pip install wandb`); a resumed run continues the same W&B run.

Only JAX process 0 writes; the other processes get a writer that does nothing, so call sites
need no `if jax.process_index() == 0`.
"""

import json
import os
import time

import jax
import numpy as np
from PIL import Image
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.event_file_writer import EventFileWriter

METRICS_FILE = "metrics.jsonl"
_WANDB_ID_FILE = "wandb_run_id"


class JsonlSink:
  """Appends records to `workdir/metrics.jsonl` (flushed at once: a kill loses nothing logged)."""

  def __init__(self, workdir: str):
    self._file = open(os.path.join(workdir, METRICS_FILE), "a")

  def scalars(self, step: int, split: str, metrics: dict) -> None:
    self._file.write(json.dumps({"step": step, "split": split, **metrics}) + "\n")
    self._file.flush()

  def image(self, step: int, tag: str, path: str) -> None:
    del step, tag, path  # Pictures are files of their own.

  def close(self) -> None:
    self._file.close()


class TensorBoardSink:
  """Scalars and PNG pictures in TensorBoard event files under `workdir/tensorboard`.

  Args:
    workdir: the run's directory.
    start_step: the step a resumed run starts from: TensorBoard is told to drop the events an
      earlier, killed run wrote after it (they are written again).
  """

  def __init__(self, workdir: str, start_step: int = 0):
    self._events = EventFileWriter(os.path.join(workdir, "tensorboard"))
    if start_step:  # TensorBoard purges older events at steps >= a START session log's step.
      self._add(start_step + 1, session_log=event_pb2.SessionLog(
          status=event_pb2.SessionLog.START))

  def _add(self, step: int, **fields) -> None:
    self._events.add_event(event_pb2.Event(wall_time=time.time(), step=step, **fields))
    self._events.flush()

  def scalars(self, step: int, split: str, metrics: dict) -> None:
    self._add(step, summary=summary_pb2.Summary(value=[
        summary_pb2.Summary.Value(tag=f"{split}/{k}", simple_value=v)
        for k, v in metrics.items()]))

  def image(self, step: int, tag: str, path: str) -> None:
    with open(path, "rb") as f:
      encoded = f.read()
    with Image.open(path) as picture:
      width, height = picture.size
      channels = len(picture.getbands())
    summary_image = summary_pb2.Summary.Image(height=height, width=width, colorspace=channels,
                                              encoded_image_string=encoded)
    self._add(step, summary=summary_pb2.Summary(
        value=[summary_pb2.Summary.Value(tag=tag, image=summary_image)]))

  def close(self) -> None:
    self._events.close()


class WandbSink:
  """Weights & Biases: the run's config, scalars and pictures; resumes the same W&B run.

  Args:
    workdir: the run's directory (W&B's files go to `workdir/wandb`; the run id is kept in
      `workdir/wandb_run_id` so that a resumed training run continues the same W&B run).
    project: the W&B project.
    config: the experiment config, as a plain dict.
  """

  def __init__(self, workdir: str, project: str, config: dict):
    import wandb  # pylint: disable=g-import-not-at-top  (optional; checked by config.validate)
    self._wandb = wandb
    id_path = os.path.join(workdir, _WANDB_ID_FILE)
    run_id = open(id_path).read().strip() if os.path.exists(id_path) else wandb.util.generate_id()
    with open(id_path, "w") as f:
      f.write(run_id)
    self._run = wandb.init(project=project, dir=workdir, id=run_id, resume="allow",
                           config=config, name=os.path.basename(workdir))

  def scalars(self, step: int, split: str, metrics: dict) -> None:
    self._run.log({f"{split}/{k}": v for k, v in metrics.items()}, step=step)

  def image(self, step: int, tag: str, path: str) -> None:
    self._run.log({tag: self._wandb.Image(path)}, step=step)

  def close(self) -> None:
    self._run.finish()


class MetricWriter:
  """Sends every record and picture to each sink (on process 0; elsewhere does nothing).

  Args:
    workdir: the run's directory.
    start_step: the step a resumed run starts from (see `TensorBoardSink`).
    wandb_project: a Weights & Biases project to log to as well; "" for none.
    config: the experiment config as a plain dict (for W&B).
  """

  def __init__(self, workdir: str, start_step: int = 0, wandb_project: str = "",
               config: dict | None = None):
    self._sinks = []
    if jax.process_index() != 0:
      return
    self._sinks = [JsonlSink(workdir), TensorBoardSink(workdir, start_step)]
    if wandb_project:
      self._sinks.append(WandbSink(workdir, wandb_project, config or {}))

  def write(self, step: int, split: str, metrics: dict) -> None:
    """Records scalars under `split/name` at `step`."""
    values = {k: float(np.asarray(v)) for k, v in metrics.items()}
    for sink in self._sinks:
      sink.scalars(step, split, values)

  def write_image(self, step: int, tag: str, path: str) -> None:
    """Records the PNG at `path` as picture `tag` at `step` (where sinks take pictures)."""
    for sink in self._sinks:
      sink.image(step, tag, path)

  def close(self) -> None:
    """Flushes and closes every sink."""
    for sink in self._sinks:
      sink.close()


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
