"""Tiny segmentation, captioning and detection runs, one after another, in one process group.

`tests/test_multiprocess.py` starts this script once per process, with `vision_jax.main`'s
multi-process flags, to check that every task trains and evaluates on several processes (their
eval pictures, decoding and mAP included) exactly as on one; one process group for all tasks
saves starting JAX three times. Float64 (run with JAX_ENABLE_X64=1), so that the metrics of
different topologies agree to rounding. Process 0 writes `WORKDIR/results.json`: each task's
final eval metrics.

    JAX_ENABLE_X64=1 python tests/multiprocess_tasks.py --data_dir=DIR --workdir=DIR \
        [--coordinator_address=host:port --num_processes=N --process_id=I]
"""

import argparse
import json
import os

import ml_collections

import shipped
from vision_jax import distributed

TASKS = ("segmentation", "captioning", "detection")


def _common(c: ml_collections.ConfigDict, data_dir: str) -> ml_collections.ConfigDict:
  c.dataset.name, c.dataset.data_dir = "synthetic_shapes/tiny32", data_dir  # 64 test images.
  c.dataset.prepare, c.dataset.in_memory = False, True
  c.model.dtype = "float64"
  c.input.batch_size = c.input.eval_batch_size = 16  # Eval: 4 batches, 8 rows per process.
  c.input.num_workers = 0
  c.train.num_steps = c.train.eval_every = 2
  c.train.progress_bar = False
  return c


def tiny_config(task: str, data_dir: str) -> ml_collections.ConfigDict:
  """`configs/shapes_<task>.py`, shrunk to a few seconds of CPU."""
  if task == "segmentation":
    c = shipped.load_config("shapes_fcn")
    c.input.image_size = 32
    c.model.kwargs.widths = (4, 4, 8, 8, 8)
    c.segmentation.num_pictures = 2
  elif task == "captioning":
    c = shipped.load_config("shapes_captioning")
    c.model.kwargs.features = (8, 8)  # The encoder's convolutions.
    c.model.kwargs.embed_dim, c.model.kwargs.hidden_dim, c.model.kwargs.attention_dim = 8, 16, 8
    c.captioning.eval_examples = 24  # Greedy decoding: 2 batches, the second padded.
    c.captioning.beam_size = 1  # Beam search decodes the same way (tests/test_captioning.py).
    c.captioning.num_pictures = 2
  elif task == "detection":
    c = shipped.load_config("shapes_detection")
    c.input.image_size = 32
    c.model.kwargs.widths = (4, 8, 8, 8, 8)
    d = c.detection
    d.feature_width = d.rpn_width = d.head_width = 8
    d.anchor_sizes = (8.0, 16.0)
    d.rpn_pre_nms_train = d.rpn_pre_nms_test = 64
    d.rpn_post_nms_train, d.rpn_post_nms_test, d.roi_batch_size = 16, 12, 8
    d.max_detections = d.eval_max_detections = 10
    d.num_pictures = 2
  else:
    raise ValueError(f"Unknown task {task!r}; valid choices: {list(TASKS)}")
  return _common(c, data_dir)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--data_dir", required=True)
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--coordinator_address")
  parser.add_argument("--num_processes", type=int)
  parser.add_argument("--process_id", type=int)
  args = parser.parse_args()
  distributed.initialize(args.coordinator_address, args.num_processes, args.process_id)
  import jax  # After `initialize`, as in vision_jax.main.
  from vision_jax.train import loop

  results = {task: loop.train_and_evaluate(tiny_config(task, args.data_dir),
                                           os.path.join(args.workdir, task))
             for task in TASKS}
  if jax.process_index() == 0:
    with open(os.path.join(args.workdir, "results.json"), "w") as f:
      json.dump(results, f, indent=1)


if __name__ == "__main__":
  main()
