"""Device meshes and shardings: data parallelism, optionally FSDP-style parameter sharding.

One `Mesh` over every device of every process with two axes, `data` and `fsdp` (of size
`parallel.fsdp`, 1 by default). Batches are split over both axes. With `fsdp` = 1 the train state
is replicated (plain data parallelism); with `fsdp` > 1 every large parameter, and with it its
optimiser moments and EMA, is split along one dimension over the `fsdp` axis (ZeRO-3 / FSDP):
XLA gathers each layer's weights where they are used and reduce-scatters their gradients.
Under `jit` every reduction over the batch (the loss, BatchNorm statistics) is global.

For the `pmap` strategy the same state lives in pmap's layout (a leading axis, one copy per
local device); `to_pmap` and `from_pmap` convert without leaving the devices.
"""

import math

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"
FSDP_AXIS = "fsdp"
PMAP_AXIS = "batch"  # pmap's axis name, for `lax.pmean` and BatchNorm's `axis_name`.
# Leaves with fewer elements stay replicated under FSDP: splitting them saves nothing.
FSDP_MIN_SIZE = 2**14


def use_cpu_devices(count: int) -> None:
  """Splits this host's CPU into `count` JAX devices, before JAX starts its backends.

  On a CPU, data parallelism over several CPU devices, each working on its share of the batch
  in parallel, keeps the cores busier than one device that parallelises each operation: a small
  CNN trains ~1.6x faster on 2 cores with 2 devices (docs/performance.md). 0 leaves JAX's
  default (one CPU device, or what `XLA_FLAGS=--xla_force_host_platform_device_count` says) and
  touches nothing, so `jax.distributed.initialize` may still follow. Has no effect on GPU or TPU
  devices, nor once JAX has started (then `jax.devices("cpu")` shows what there is).

  Args:
    count: CPU devices wanted; 0 for JAX's default.

  Raises:
    ValueError: for a negative `count`.
  """
  if count < 0:
    raise ValueError(f"config.parallel.cpu_devices={count} must be >= 0 (0: JAX's default).")
  if count:
    try:
      jax.config.update("jax_num_cpu_devices", count)
    except RuntimeError:  # The backends have started: the count is fixed for this process.
      pass


def make_mesh(devices=None, fsdp: int = 1) -> Mesh:
  """A (data, fsdp) mesh over `devices` (default: all devices of all processes).

  Args:
    devices: the devices, in order; consecutive ones form an `fsdp` group.
    fsdp: size of the parameter-sharding axis; 1 for pure data parallelism.
  """
  devices = np.asarray(jax.devices() if devices is None else devices)
  if fsdp < 1 or devices.size % fsdp:
    raise ValueError(f"config.parallel.fsdp={fsdp} must be a positive divisor of the device "
                     f"count ({devices.size}).")
  return Mesh(devices.reshape(-1, fsdp), (DATA_AXIS, FSDP_AXIS))


def data_sharding(mesh: Mesh) -> NamedSharding:
  """Splits the leading (batch) dimension over all devices."""
  return NamedSharding(mesh, P((DATA_AXIS, FSDP_AXIS)))


def to_global(batch: dict, sharding: jax.sharding.Sharding) -> dict:
  """Assembles each process's local numpy batch into one global array per key."""
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), batch)


def replicated(mesh: Mesh) -> NamedSharding:
  """The same full copy on every device."""
  return NamedSharding(mesh, P())


def _fsdp_spec(shape: tuple[int, ...], size: int) -> P:
  """Splits the largest dimension that divides evenly over `size` devices, if any."""
  if size == 1 or math.prod(shape) < FSDP_MIN_SIZE:
    return P()
  candidates = [d for d in np.argsort(shape)[::-1] if shape[d] % size == 0]
  if not candidates:
    return P()
  spec = [None] * len(shape)
  spec[candidates[0]] = FSDP_AXIS
  return P(*spec)


def state_shardings(mesh: Mesh, tree):
  """Shardings for a state pytree (arrays or `ShapeDtypeStruct`s) on `mesh`.

  Replicated when the mesh's `fsdp` axis has size 1; otherwise large leaves are split on the
  `fsdp` axis (see `FSDP_MIN_SIZE`) and the rest replicated.
  """
  size = mesh.shape[FSDP_AXIS]
  return jax.tree.map(lambda x: NamedSharding(mesh, _fsdp_spec(x.shape, size)), tree)


def _pmap_sharding() -> NamedSharding:
  """How `jax.pmap` lays out its inputs and outputs: the leading axis over all devices."""
  return NamedSharding(Mesh(np.asarray(jax.devices()), (PMAP_AXIS,)), P(PMAP_AXIS))


def _local_devices(mesh: Mesh) -> list:
  """This process's devices in mesh order (the order per-device buffers are handed over)."""
  return [d for d in mesh.devices.flat if d.process_index == jax.process_index()]


def to_pmap(tree):
  """Replicated global arrays → pmap layout: a leading device axis, one copy per device.

  Each device's copy is reused in place (no host round trip).
  """
  sharding = _pmap_sharding()

  def convert(x):
    by_device = {shard.device: shard.data for shard in x.addressable_shards}
    return jax.make_array_from_single_device_arrays(
        (jax.device_count(), *x.shape), sharding,
        [by_device[d][None] for d in _local_devices(sharding.mesh)])
  return jax.tree.map(convert, tree)


def pmap_batch(batch: dict) -> dict:
  """This process's numpy batch → a global (devices, B / devices, ...) array per key."""
  num_local = jax.local_device_count()
  return to_global(jax.tree.map(
      lambda x: np.reshape(x, (num_local, x.shape[0] // num_local, *x.shape[1:])), batch),
      _pmap_sharding())


def first_local_copy(tree):
  """One device's entry of each pmap-layout array (e.g. metrics, equal on all devices)."""
  return jax.tree.map(lambda x: x.addressable_shards[0].data[0], tree)


def from_pmap(tree, mesh: Mesh):
  """pmap layout → replicated global arrays on `mesh`; each device keeps its own copy.

  The copies are equal: every pmap train step averages gradients and statistics over devices.
  """
  sharding = replicated(mesh)

  def convert(x):
    by_device = {shard.device: shard.data for shard in x.addressable_shards}
    return jax.make_array_from_single_device_arrays(
        x.shape[1:], sharding, [by_device[d][0] for d in _local_devices(mesh)])
  return jax.tree.map(convert, tree)
