"""Multi-process (multi-host) start-up with JAX's own `jax.distributed`.

Every process runs the same command. On SLURM (`srun`, more than one task) and on Cloud TPU pods
JAX finds the coordinator, the process count and this process's id by itself; elsewhere pass
them explicitly (`--coordinator_address=host:port --num_processes=N --process_id=i`). A single
process needs nothing. After `initialize`, `jax.devices()` lists the devices of all processes
and one `Mesh` spans them.

Which GPUs a process drives (`--local_device_ids`). On SLURM (and Open MPI) JAX assumes one task
per GPU: unless told otherwise it makes only GPU number `SLURM_LOCALID` (the task's index on its
node) visible to the process, counting among the GPUs the task can see
(`jax/_src/clusters/cluster.py`, `auto_detect_unset_distributed_params`, JAX 0.10). So:

- one task per GPU, every task seeing all of its node's GPUs (`srun --ntasks-per-node=8
  --gpus-per-node=8`): leave the flag unset; task i drives GPU i.
- one task per host (`srun --ntasks-per-node=1 --gpus-per-node=8`): JAX would give the task
  GPU 0 only; pass `--local_device_ids=all` to drive every GPU it sees.
- SLURM binding each task to its own GPUs (`--gpus-per-task`, `--gpu-bind`): each task sees
  only its GPUs, numbered from 0, and JAX's GPU `SLURM_LOCALID` may not exist; pass
  `--local_device_ids=all`.

`all` is passed to JAX as an empty list, which leaves `jax_cuda_visible_devices` at its
default (every device CUDA lists) and stops the SLURM rule. A comma list (`0,1,2,3`) picks
those of the visible GPUs. CPU and TPU processes ignore the flag.
"""

import os
import re
from collections.abc import Mapping

from absl import logging
import jax

from vision_jax import errors

ALL_DEVICES = "all"
# What JAX's SLURM detection reads (jax/_src/clusters/slurm_cluster.py); srun sets them all.
SLURM_VARIABLES = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID",
                   "SLURM_LOCALID")


def parse_local_device_ids(value: str | None) -> list[int] | None:
  """`--local_device_ids` as `jax.distributed.initialize` takes it.

  Args:
    value: None (JAX decides: on SLURM GPU `SLURM_LOCALID`, elsewhere every GPU), "all" (every
      GPU the process sees) or distinct non-negative indices, e.g. "0,1,2,3".

  Returns:
    None, [] for "all" (JAX then restricts nothing), or the indices.

  Raises:
    errors.UserError: naming the value and the accepted forms.
  """
  if value is None:
    return None
  if value.strip().lower() == ALL_DEVICES:
    return []
  parts = [p.strip() for p in value.split(",")]
  if not all(re.fullmatch(r"\d+", p) for p in parts) or len(set(parts)) != len(parts):
    raise errors.UserError(f"--local_device_ids={value!r} must be '{ALL_DEVICES}' or distinct "
                           "non-negative GPU indices separated by commas, e.g. 0,1,2,3.")
  return [int(p) for p in parts]


def _on_slurm(environ: Mapping[str, str]) -> bool:
  """Whether srun started several tasks that JAX can connect by itself.

  Raises:
    errors.UserError: inside a SLURM allocation of several tasks but outside `srun` (JAX could not
      find the others).
  """
  if int(environ.get("SLURM_NTASKS", "1")) <= 1:
    return False
  missing = [v for v in SLURM_VARIABLES if v not in environ]
  if missing:
    raise errors.UserError(
        f"SLURM_NTASKS={environ['SLURM_NTASKS']} but {', '.join(missing)} unset: start every "
        "task with srun (JAX reads srun's variables), or pass --coordinator_address, "
        "--num_processes and --process_id.")
  return True


def _on_multiprocess_cluster(environ: Mapping[str, str]) -> bool:
  """Whether a scheduler started several processes that JAX can discover on its own."""
  if _on_slurm(environ):
    return True
  hosts = environ.get("TPU_WORKER_HOSTNAMES", "")  # Set on every host of a TPU pod slice.
  return "," in hosts


def _tasks_on_this_node(environ: Mapping[str, str]) -> int | None:
  """This node's task count from SLURM_STEP_TASKS_PER_NODE (e.g. "8(x2),4") and
  SLURM_NODEID; None when SLURM does not say."""
  per_node = environ.get("SLURM_STEP_TASKS_PER_NODE") or environ.get("SLURM_TASKS_PER_NODE")
  if not per_node or "SLURM_NODEID" not in environ:
    return None
  counts = []
  for part in per_node.split(","):
    match = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", part.strip())
    if not match:
      return None
    counts += [int(match.group(1))] * int(match.group(2) or 1)
  node = int(environ["SLURM_NODEID"])
  return counts[node] if node < len(counts) else None


def slurm_gpu_warning(environ: Mapping[str, str], local_device_ids: list[int] | None) -> str | None:
  """What goes wrong with JAX's one-GPU-per-task rule on this SLURM task, or None.

  Only with `--local_device_ids` unset: GPUs left idle (more on the node, SLURM_GPUS_ON_NODE,
  than tasks), or GPU number SLURM_LOCALID missing among those the task sees (SLURM binds
  GPUs to tasks: CUDA_VISIBLE_DEVICES lists fewer), where JAX fails with "invalid device
  ordinal".
  """
  if local_device_ids is not None or "SLURM_LOCALID" not in environ:
    return None
  local_id = int(environ["SLURM_LOCALID"])
  visible = environ.get("CUDA_VISIBLE_DEVICES", "").strip()
  if visible and local_id >= len(visible.split(",")):
    return (f"This task sees {len(visible.split(','))} GPU(s) (CUDA_VISIBLE_DEVICES={visible}) "
            f"but JAX will open GPU number SLURM_LOCALID={local_id} among them, which does not "
            "exist: SLURM binds GPUs to tasks here; pass --local_device_ids=all.")
  gpus = environ.get("SLURM_GPUS_ON_NODE", "")
  tasks = _tasks_on_this_node(environ)
  if not gpus.isdigit() or tasks is None or int(gpus) <= tasks:
    return None
  return (f"SLURM gives this node {gpus} GPUs and {tasks} task(s); JAX drives one GPU per task "
          f"(GPU SLURM_LOCALID), so {int(gpus) - tasks} stay idle. Start one task per GPU "
          "(srun --ntasks-per-node=<GPUs per node>) or pass --local_device_ids=all.")


def initialize_kwargs(coordinator_address: str | None = None, num_processes: int | None = None,
                      process_id: int | None = None, local_device_ids: str | None = None,
                      environ: Mapping[str, str] | None = None) -> dict | None:
  """What `initialize` passes to `jax.distributed.initialize`; None for a single process.

  Args:
    coordinator_address: `host:port` of process 0's coordinator; None to auto-detect.
    num_processes: total number of processes (with `coordinator_address`).
    process_id: this process's index in [0, num_processes) (with `coordinator_address`).
    local_device_ids: the `--local_device_ids` flag (see `parse_local_device_ids`).
    environ: the environment (default `os.environ`).

  Raises:
    errors.UserError: when only some of the explicit arguments are given, they are
      inconsistent, or `local_device_ids` is malformed.
  """
  environ = os.environ if environ is None else environ
  devices = parse_local_device_ids(local_device_ids)
  explicit = (coordinator_address, num_processes, process_id)
  if any(v is not None for v in explicit):
    if any(v is None for v in explicit):
      raise errors.UserError(
          "Give all of --coordinator_address, --num_processes and --process_id (got "
          f"coordinator_address={coordinator_address!r}, num_processes={num_processes!r}, "
          f"process_id={process_id!r}), or none of them to auto-detect SLURM/TPU.")
    if not 0 <= process_id < num_processes:
      raise errors.UserError(f"--process_id={process_id} must be in [0, {num_processes}).")
  elif not _on_multiprocess_cluster(environ):
    return None
  return {"coordinator_address": coordinator_address, "num_processes": num_processes,
          "process_id": process_id, "local_device_ids": devices}


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, local_device_ids: str | None = None,
               heartbeat_timeout_seconds: int = 100) -> bool:
  """Connects this process to the others, if there are others.

  Args:
    coordinator_address: `host:port` of process 0's coordinator; None to auto-detect.
    num_processes: total number of processes (with `coordinator_address`).
    process_id: this process's index in [0, num_processes) (with `coordinator_address`).
    local_device_ids: which GPUs this process drives: None (JAX's choice; on SLURM one per
      task), "all", or e.g. "0,1,2,3" (see the module docstring).
    heartbeat_timeout_seconds: if a process stops answering for this long (it crashed, or its
      host died), the others stop with an error instead of waiting forever in a collective.

  Returns:
    True when running as one of several processes.

  Raises:
    errors.UserError: when only some of the explicit arguments are given, or they are
      inconsistent, or `local_device_ids` is malformed.
  """
  kwargs = initialize_kwargs(coordinator_address, num_processes, process_id, local_device_ids)
  if kwargs is None:
    if devices := parse_local_device_ids(local_device_ids):  # One process: as JAX would.
      for platform in ("cuda", "rocm"):
        jax.config.update(f"jax_{platform}_visible_devices", ",".join(map(str, devices)))
    return False
  if warning := slurm_gpu_warning(os.environ, kwargs["local_device_ids"]):
    logging.warning(warning)
  # CPU-only runs (tests, laptops) need a collectives library for cross-process all-reduces.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(**kwargs, heartbeat_timeout_seconds=heartbeat_timeout_seconds)
  return True
