"""Command line: `python -m vision_jax.main --config=configs/X.py[:arg] --workdir=DIR`.

Any config field can be overridden, e.g. `--config.optim.learning_rate=0.1`; misspelt fields
are rejected. Rerunning with the same workdir resumes from its latest checkpoint. Several
processes (hosts): start the same command on each; see `vision_jax.distributed`.
"""

from absl import app, flags, logging
from ml_collections import config_flags

from vision_jax import distributed, errors, sharding
from vision_jax.train import loop

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and plots.")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "Multi-process: host:port of process 0 (omit on SLURM/TPU).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Multi-process: process count.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "Multi-process: this process's index.")
_LOCAL_DEVICE_IDS = flags.DEFINE_string(
    "local_device_ids", None,
    "GPUs this process drives: unset = JAX's choice (on SLURM: GPU SLURM_LOCALID, one task per "
    "GPU); 'all' = every GPU it sees (one task per host); or e.g. '0,1,2,3'.")
_HEARTBEAT = flags.DEFINE_integer(
    "heartbeat_timeout_seconds", 100,
    "Multi-process: the others stop with an error when one is silent this long.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not _WORKDIR.value.strip():
    raise errors.UserError("--workdir is empty; name the run's output directory, e.g. "
                           "--workdir=runs/my_run.")
  if not flags.FLAGS["verbosity"].present:  # Orbax and TFDS log every step at INFO.
    logging.set_verbosity(logging.WARNING)
  # Before anything starts JAX's backends (distributed.initialize must precede them too).
  if _CONFIG.value.parallel.cpu_devices >= 0:  # A negative value: validate names it below.
    sharding.use_cpu_devices(_CONFIG.value.parallel.cpu_devices)
  distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value,
                         local_device_ids=_LOCAL_DEVICE_IDS.value,
                         heartbeat_timeout_seconds=_HEARTBEAT.value)
  loop.train_and_evaluate(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  errors.run(main)
