"""Config presets, the one mechanism the config files (`configs/*.py`) share.

A config file's `get_config(arg)` names one choice from each of its option groups (after
big_vision's `configs/common.py`), builds its defaults and applies what each choice changes:

    choice = presets.parse("tiny,far", size=("tiny", "base"), decoder=("far", "mar"))
    -> ConfigDict(size="tiny", decoder="far")
    presets.override(config, {"data": {"batch_size": 8}, "dtype": "float32"})

The first choice of each group is its default. An unknown word, two words from the same group,
or a change naming a field the defaults lack is an error (a typo would otherwise be ignored).

Config files are loaded by path (`--config=configs/dvae.py:tiny`), not imported as a package, and
import only from `nwt_jax`; `load_config("configs/dvae.py:tiny")` loads one the same way.
"""

from collections.abc import Mapping
import importlib.util
import itertools
import os
from typing import Any

import ml_collections

# The checkout's root (parent of the package): where `load_config` looks for a relative path
# that is not below the current directory.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_MODULES = itertools.count()


def parse(arg: str | None, **groups: tuple[str, ...]) -> ml_collections.ConfigDict:
  """{group: chosen word} for the comma-separated words of `arg`; each group's default is its
  first word. Raises ValueError naming the valid words for an unknown word or a group set twice."""
  chosen = {}
  owner = {word: group for group, words in groups.items() for word in words}
  for word in filter(None, (w.strip() for w in (arg or "").split(","))):
    if word not in owner:
      valid = "; ".join(f"{g}: {'|'.join(ws)}" for g, ws in groups.items())
      raise ValueError(f"Unknown config preset {word!r}. Valid presets ({valid}).")
    group = owner[word]
    if group in chosen:
      raise ValueError(f"Presets {chosen[group]!r} and {word!r} both set {group!r}; pick one.")
    chosen[group] = word
  return ml_collections.ConfigDict(
      {group: chosen.get(group, words[0]) for group, words in groups.items()})


def override(config: ml_collections.ConfigDict, changes: Mapping[str, Any],
             prefix: str = "") -> ml_collections.ConfigDict:
  """Sets `changes` ({field: value}, nested dicts for sections) in `config`, in place, and
  returns it. Every field must exist already: an unknown one is a ValueError naming it."""
  for key, value in changes.items():
    name = prefix + key
    if key not in config:
      raise ValueError(f"preset sets unknown field {name} (fields of "
                       f"{prefix[:-1] or 'the config'}: {', '.join(sorted(config.keys()))})")
    if isinstance(value, Mapping) and isinstance(config[key], ml_collections.ConfigDict):
      override(config[key], value, name + ".")
    else:
      config[key] = value
  return config


def load_config(spec: str) -> ml_collections.ConfigDict:
  """The config of `spec`, 'path/to/config.py[:preset,...]', as `--config=spec` loads it:
  the file's `get_config(preset)` (or `get_config()` without a preset). A relative path is
  looked up in the current directory, then in the checkout `nwt_jax` lives in."""
  path, _, arg = spec.partition(":")
  if not os.path.isabs(path) and not os.path.exists(path):
    path = os.path.join(_ROOT, path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"no such config file {spec.partition(':')[0]!r}")
  name = f"_nwt_jax_config_{next(_MODULES)}"
  module_spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()
