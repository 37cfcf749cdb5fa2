"""Named registries (models, tasks) that code outside the package adds to.

A paper's own package registers its model or task at import time:

    from vision_jax import models

    @models.register("my_net")
    class MyNet(nn.Module):
      ...

and names that module in its config's `imports` field, so every entry point (training,
resume, `viz`, `summary`, inference) imports it before it looks a name up.
"""

from collections.abc import Iterator, Mapping
from typing import Any, TypeVar

from vision_jax import errors

T = TypeVar("T")


def _origin(obj: Any) -> str:
  """`module.qualname` of a class or function (a `functools.partial` names its function)."""
  target = getattr(obj, "func", obj)
  return f"{getattr(target, '__module__', '?')}.{getattr(target, '__qualname__', repr(target))}"


class Registry(Mapping[str, T]):
  """A read-only mapping name → entry, extended only through `register`.

  Attributes:
    kind: What it holds ("model", "task"), for messages.
    how_to_register: The decorator to name in messages, e.g. "vision_jax.models.register".
  """

  def __init__(self, kind: str, how_to_register: str, entries: Mapping[str, T] = ()):
    self.kind = kind
    self.how_to_register = how_to_register
    self._entries: dict[str, T] = {}
    for name, entry in dict(entries).items():
      self.register(name, entry)

  def register(self, name: str, entry: T | None = None) -> Any:
    """Adds `entry` under `name`; without `entry`, a decorator that adds what it decorates.

    Registering the same class again (e.g. its module imported twice) is allowed; another
    entry under a taken name is refused, so two packages cannot silently replace each other.

    Raises:
      ValueError: for a name that is not a non-empty string without spaces, or one taken.
    """
    if not isinstance(name, str) or not name or name != name.strip() or " " in name:
      raise ValueError(f"A {self.kind} name must be a non-empty string without spaces; got "
                       f"{name!r}.")
    if entry is None:
      def decorator(obj: T) -> T:
        self.register(name, obj)
        return obj
      return decorator
    if name in self._entries and _origin(self._entries[name]) != _origin(entry):
      raise ValueError(f"{self.kind.capitalize()} name {name!r} is taken by "
                       f"{_origin(self._entries[name])}; register {_origin(entry)} under "
                       "another name.")
    self._entries[name] = entry
    return entry

  def unknown(self, name: Any, field: str | None = None) -> errors.UserError:
    """The error for a name that is not registered: the valid choices, and how to add one."""
    what = f"config.{field}={name!r} is not a registered {self.kind}" if field else (
        f"Unknown {self.kind} {name!r}")
    return errors.UserError(
        f"{what}; valid choices: {sorted(self._entries)}. A {self.kind} of your own: decorate "
        f"it with `@{self.how_to_register}(NAME)` in a module that config.imports names (or "
        "that your program imports first).")

  def lookup(self, name: str, field: str | None = None) -> T:
    """The entry under `name`.

    Raises:
      errors.UserError: naming the valid choices and how to register a new one.
    """
    if name not in self._entries:
      raise self.unknown(name, field)
    return self._entries[name]

  def __getitem__(self, name: str) -> T:
    return self._entries[name]

  def __iter__(self) -> Iterator[str]:
    return iter(self._entries)

  def __len__(self) -> int:
    return len(self._entries)

  def __repr__(self) -> str:
    return f"Registry({self.kind}: {sorted(self._entries)})"

