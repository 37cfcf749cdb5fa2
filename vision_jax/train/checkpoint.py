"""Orbax checkpoints of the train state.

Saves are asynchronous (training goes on while the arrays are written), atomic (Orbax writes
into a temporary directory and renames it when complete; a half-written step is never
restored) and collective (every process writes its shards of the global arrays). Kept: the last
`keep` steps plus the best one by an eval metric. The data position needs no saving: it is a
function of the step (see `vision_jax.data.pipeline`). Restoring onto another topology (other
device or process counts, `jit` or `pmap`) re-shards the arrays on the way in.
"""

import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

_LOWER_IS_BETTER = ("loss",)


class Checkpointer:
  """A `CheckpointManager` for the `state` item with the project's retention policy.

  Args:
    directory: where step directories go (absolute path).
    keep: how many of the most recent checkpoints to keep.
    best_metric: eval metric name that ranks checkpoints; the best one is kept too.
    lower_is_better: whether a lower `best_metric` is better; None: only for `loss`.
  """

  def __init__(self, directory: str, *, keep: int, best_metric: str,
               lower_is_better: bool | None = None):
    policy = checkpoint_managers.AnyPreservationPolicy([
        checkpoint_managers.LatestN(keep),
        checkpoint_managers.BestN(
            get_metric_fn=lambda metrics: metrics[best_metric],
            reverse=(best_metric in _LOWER_IS_BETTER if lower_is_better is None
                     else lower_is_better), n=1,
            keep_checkpoints_without_metrics=False),
    ])
    options = ocp.CheckpointManagerOptions(preservation_policy=policy, create=True,
                                           enable_async_checkpointing=True)
    self._manager = ocp.CheckpointManager(directory, options=options)

  def latest_step(self) -> int | None:
    """The newest complete checkpoint's step, or None."""
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    """Steps of every kept checkpoint, oldest first."""
    return sorted(self._manager.all_steps())

  def best_step(self) -> int | None:
    """The kept checkpoint with the best eval metric, or None."""
    return self._manager.best_step()

  def save(self, step: int, state, metrics: dict | None = None) -> None:
    """Starts an asynchronous save of `state` (global arrays) at `step`."""
    self._manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state)),
                       metrics=metrics, force=True)

  def restore(self, step: int, abstract_state):
    """Restores the state onto the shardings in `abstract_state`.

    Args:
      step: which checkpoint.
      abstract_state: a pytree of `jax.ShapeDtypeStruct` (with shardings) shaped like the state;
        restoring onto it re-shards to whatever devices this run has.

    Returns:
      The restored state.
    """
    args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state))
    return self._manager.restore(step, args=args).state

  def wait(self) -> None:
    """Blocks until pending asynchronous saves are on disk."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    """Waits for pending saves and releases the manager's resources."""
    self._manager.close()
