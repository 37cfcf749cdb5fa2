"""Device mesh and shardings for data-parallel training with `jax.jit`.

One `Mesh` over every device of every process with a single `data` axis: batches are split
along it, the train state is replicated. Under `jit`, reductions over the batch (the loss,
BatchNorm statistics) are global: XLA inserts the cross-device collectives.
"""

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def make_mesh(devices=None) -> Mesh:
  """A 1-D mesh named `data` over `devices` (default: all devices of all processes)."""
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def data_sharding(mesh: Mesh) -> NamedSharding:
  """Splits the leading (batch) dimension over the `data` axis."""
  return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  """The same full copy on every device."""
  return NamedSharding(mesh, P())


def replicated_tree(mesh: Mesh, tree):
  """A `replicated` sharding for every leaf of `tree` (e.g. the train state)."""
  return jax.tree.map(lambda _: replicated(mesh), tree)
