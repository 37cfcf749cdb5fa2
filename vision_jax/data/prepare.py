"""Prepares a dataset's array_record files once.

    python -m vision_jax.data.prepare synthetic_shapes/size32 [--data_dir=DIR] [--manual_dir=DIR]

Our own builders prepare without TensorFlow; a stock TFDS dataset whose builder yields numpy
images needs it for this step only (the `prepare` extra: `pip install -r requirements-prepare.txt`).
Training then reads the files with `tfds.data_source`, without TensorFlow: prepare here, copy
the data directory to the accelerator machine, train there with `--config.dataset.prepare=False`.
"""

from absl import app, flags

from vision_jax import errors
from vision_jax.data import datasets

_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data directory (default: TFDS's own).")
_MANUAL_DIR = flags.DEFINE_string("manual_dir", None, "Directory of manually placed raw files.")


def main(argv):
  if len(argv) < 2:
    raise app.UsageError("Name at least one dataset, e.g. synthetic_shapes/size32.")
  for name in argv[1:]:
    builder = datasets.get_builder(name, data_dir=_DATA_DIR.value, manual_dir=_MANUAL_DIR.value,
                                   prepare=True)
    print(f"{builder.info.full_name}: {builder.data_dir} "
          f"{ {k: v.num_examples for k, v in builder.info.splits.items()} }")


if __name__ == "__main__":
  errors.run(main)
