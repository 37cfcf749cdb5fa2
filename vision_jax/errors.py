"""Bad input: the project's own error, and how the command lines report it.

Anything the user can fix (a config value, a flag, a file, a dataset) raises `UserError` with one
line that names the field, the value and the fix. The command lines run their `main` through
`run` (absl) or `run_argparse`, which print `error: <message>` to stderr and exit with status 2,
without a traceback unless `--traceback` is given. A run stopped by NaN/inf (`FloatingPointError`,
whose message names the step and the checkpoint kept) is printed the same way, with status 1.
Anything else is a bug and keeps its traceback.
"""

import difflib
import sys
from collections.abc import Callable, Sequence
from typing import Any

TRACEBACK_FLAG = "--traceback"
EXIT_STATUS = 2  # As argparse and absl use for bad usage.


class UserError(ValueError):
  """Bad input (config value, flag, file, dataset); the message says what to change."""


class MissingFileError(UserError, FileNotFoundError):
  """A file or directory the input names does not exist (also a `FileNotFoundError`)."""


def run(main: Callable[[list[str]], Any]) -> None:
  """`absl.app.run(main)`, with bad input (flags included) reported as one line.

  Defines the boolean flag `--traceback` (once) to re-raise instead.
  """
  from absl import app, flags  # pylint: disable=g-import-not-at-top  (CLIs only)
  if "traceback" not in flags.FLAGS:
    flags.DEFINE_boolean("traceback", False,
                         "Show the Python traceback of input errors (they print one line).")
  try:
    app.run(main, flags_parser=_parse_flags)
  except UserError as error:
    _report(error, TRACEBACK_FLAG in sys.argv or _flag_value("traceback"))
  except FloatingPointError as error:  # A diverged run: its message says what was kept.
    _report(error, TRACEBACK_FLAG in sys.argv or _flag_value("traceback"), status=1)


def run_argparse(main: Callable[[list[str]], Any], argv: Sequence[str] | None = None) -> Any:
  """`main(argv)` of an argparse command line, `--traceback` taken out of `argv` first."""
  argv = list(sys.argv[1:] if argv is None else argv)
  show = TRACEBACK_FLAG in argv
  try:
    return main([a for a in argv if a != TRACEBACK_FLAG])
  except UserError as error:
    _report(error, show)


def _report(error: Exception, show_traceback: bool, status: int = EXIT_STATUS) -> None:
  if show_traceback:
    raise error
  print(f"error: {error}", file=sys.stderr)
  sys.exit(status)


def _flag_value(name: str) -> bool:
  from absl import flags  # pylint: disable=g-import-not-at-top
  return flags.FLAGS.is_parsed() and bool(flags.FLAGS[name].value)


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with ml_collections' config-file errors as `UserError`s."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  try:
    args = flags.FLAGS(argv)
  except (KeyError, AttributeError) as error:  # ml_collections: an override names no field.
    if TRACEBACK_FLAG in argv:
      raise
    raise UserError(_unknown_override(argv) or f"bad flag: {error}") from error
  except flags.Error as error:
    if TRACEBACK_FLAG in argv:
      raise
    raise UserError(_flag_error_message(error)) from error
  for name, flag in _config_file_flags():
    try:  # A config file that failed to load raises only when the config is first used.
      getattr(flag.value, "lock", None)
    except OSError as error:
      if TRACEBACK_FLAG in argv:
        raise
      reason = str(error).strip().splitlines()[-1].strip()
      raise UserError(f"--{name}: cannot load the config file: {reason}") from error
  return args


def _config_file_flags() -> list:
  """(name, flag) of every `config_flags.DEFINE_config_file` flag."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections.config_flags import config_flags  # pylint: disable=g-import-not-at-top
  return [(name, flags.FLAGS[name]) for name in list(flags.FLAGS)
          if isinstance(flags.FLAGS[name].parser, config_flags.ConfigFileFlagParser)]


def _flag_error_message(error: Exception) -> str:
  """One line for a flag error: the config file's own `UserError`, or absl's message."""
  cause = error
  while cause.__context__ is not None:  # ml_collections re-raises config errors as text.
    cause = cause.__context__
  flag = str(error).splitlines()[0].replace(" Error whilst parsing config file:", "").rstrip(":")
  if isinstance(cause, UserError):
    return f"{flag}: {cause}"
  if isinstance(cause, TypeError) and "get_config() takes 0 positional" in str(cause):
    config, _, variant = flag.split("=", 1)[-1].partition(":")
    return (f"{config} has no variants (its get_config takes no argument); drop "
            f"':{variant}' from the flag.")
  if cause is not error and str(cause) and str(cause) not in flag:
    return f"{flag}: {cause}"
  return str(error).strip()


def _unknown_override(argv: list[str]) -> str | None:
  """`--config.a.b=v` naming no field of the config: the bad key and the nearest valid ones."""
  for name, flag in _config_file_flags():
    files = [a.split("=", 1)[1] for a in argv if a.startswith(f"--{name}=")]
    if not files:
      continue
    config = flag.parser.parse(files[-1])
    for arg in argv:
      if arg.startswith(f"--{name}."):
        path = arg[len(name) + 3:].split("=", 1)[0]
        message = unknown_key_message(config, path, prefix=name)
        if message:
          return f"--{name}.{path}: {message}"
  return None


def unknown_key_message(tree: Any, path: str, prefix: str = "config") -> str | None:
  """Why the dotted `path` names nothing in `tree` (nested mappings), or None if it does."""
  node, done = tree, prefix
  for key in path.split("."):
    if not hasattr(node, "keys"):
      return None  # A leaf (e.g. a tuple) indexed further: not a naming problem.
    if key not in node:
      valid = sorted(str(k) for k in node.keys())
      close = difflib.get_close_matches(key, valid, n=3, cutoff=0.5)
      hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
      return f"{done} has no field {key!r}; {hint}valid: {', '.join(valid)}."
    node, done = node[key], f"{done}.{key}"
  return None
