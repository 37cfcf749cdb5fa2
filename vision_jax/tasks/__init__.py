"""Tasks: what each kind of problem adds to the shared training loop (see `tasks.base`)."""

import ml_collections

from vision_jax import errors
from vision_jax.tasks.base import Task
from vision_jax.tasks.captioning import CaptioningTask
from vision_jax.tasks.classification import ClassificationTask
from vision_jax.tasks.detection import DetectionTask
from vision_jax.tasks.segmentation import SegmentationTask

# `config.task` → class with `from_config(config)`. Add new tasks here.
TASKS = {
    "captioning": CaptioningTask,
    "classification": ClassificationTask,
    "detection": DetectionTask,
    "segmentation": SegmentationTask,
}


def get_task(config: ml_collections.ConfigDict) -> Task:
  """The task `config.task` names, with its settings from the config.

  Raises:
    errors.UserError: for an unknown task name.
  """
  if config.task not in TASKS:
    raise errors.UserError(
        f"config.task={config.task!r} is not valid; valid choices: {sorted(TASKS)}")
  return TASKS[config.task].from_config(config)


__all__ = ["TASKS", "CaptioningTask", "ClassificationTask", "DetectionTask", "Task", "get_task"]
