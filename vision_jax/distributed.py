"""Multi-process (multi-host) start-up with JAX's own `jax.distributed`.

Every process runs the same command. On SLURM (`srun`, more than one task) and on Cloud TPU pods
JAX finds the coordinator, the process count and this process's id by itself; elsewhere pass
them explicitly (`--coordinator_address=host:port --num_processes=N --process_id=i`). A single
process needs nothing. After `initialize`, `jax.devices()` lists the devices of all processes
and one `Mesh` spans them.
"""

import os

import jax


def _on_multiprocess_cluster() -> bool:
  """Whether a scheduler started several processes that JAX can discover on its own."""
  if int(os.environ.get("SLURM_NTASKS", "1")) > 1:
    return True
  hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")  # Set on every host of a TPU pod slice.
  return "," in hosts


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, heartbeat_timeout_seconds: int = 100) -> bool:
  """Connects this process to the others, if there are others.

  Args:
    coordinator_address: `host:port` of process 0's coordinator; None to auto-detect.
    num_processes: total number of processes (with `coordinator_address`).
    process_id: this process's index in [0, num_processes) (with `coordinator_address`).
    heartbeat_timeout_seconds: if a process stops answering for this long (it crashed, or its
      host died), the others stop with an error instead of waiting forever in a collective.

  Returns:
    True when running as one of several processes.

  Raises:
    ValueError: when only some of the explicit arguments are given, or they are inconsistent.
  """
  explicit = (coordinator_address, num_processes, process_id)
  if any(v is not None for v in explicit):
    if any(v is None for v in explicit):
      raise ValueError(
          "Give all of --coordinator_address, --num_processes and --process_id (got "
          f"coordinator_address={coordinator_address!r}, num_processes={num_processes!r}, "
          f"process_id={process_id!r}), or none of them to auto-detect SLURM/TPU.")
    if not 0 <= process_id < num_processes:
      raise ValueError(f"--process_id={process_id} must be in [0, {num_processes}).")
  elif not _on_multiprocess_cluster():
    return False
  # CPU-only runs (tests, laptops) need a collectives library for cross-process all-reduces.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address, num_processes, process_id,
                             heartbeat_timeout_seconds=heartbeat_timeout_seconds)
  return True
