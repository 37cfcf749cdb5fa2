"""Tasks: what each kind of problem adds to the shared training loop (see `tasks.base`)."""

import ml_collections

from vision_jax import registry
from vision_jax.tasks.base import EvalContext, Task
from vision_jax.tasks.captioning.task import CaptioningTask
from vision_jax.tasks.classification.task import ClassificationTask
from vision_jax.tasks.detection.task import DetectionTask
from vision_jax.tasks.segmentation.task import SegmentationTask

# `config.task` → a `Task` subclass (built by its `from_config(config)`). Code outside the
# package adds its own with `register`.
TASKS: registry.Registry[type[Task]] = registry.Registry("task", "vision_jax.tasks.register", {
    "captioning": CaptioningTask,
    "classification": ClassificationTask,
    "detection": DetectionTask,
    "segmentation": SegmentationTask,
})
register = TASKS.register


def get_task(config: ml_collections.ConfigDict) -> Task:
  """The task `config.task` names, with its settings from the config.

  Raises:
    errors.UserError: for an unknown task name (naming the choices and how to register one).
  """
  return TASKS.lookup(config.task, field="task").from_config(config)


__all__ = ["TASKS", "CaptioningTask", "ClassificationTask", "DetectionTask", "EvalContext",
           "SegmentationTask", "Task", "get_task", "register"]
