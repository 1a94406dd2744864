"""Sampling settings that travel with a trained prior: `<prior_workdir>/sampling.json`.

Whoever tunes the sampler for a model (the demo, a user after `python -m nwt_jax.evaluate`)
stores the chosen settings beside its checkpoints; `generate` and `evaluate` take every sampling
flag that is not given on the command line from there, so a user who passes none gets the
settings the model was evaluated with.
"""

import dataclasses
import json
from typing import Any

from etils import epath

from nwt_jax.inference import sampling

FILENAME = "sampling.json"
# The stored keys: SamplingOptions' fields and the Generator's opening.
KEYS = tuple(f.name for f in dataclasses.fields(sampling.SamplingOptions)) + ("opening",)


def save(prior_workdir: str, options: sampling.SamplingOptions, opening: str = "bank") -> str:
  """Writes the settings into the prior's workdir; returns the file's path."""
  path = epath.Path(prior_workdir) / FILENAME
  path.write_text(json.dumps({**dataclasses.asdict(options), "opening": opening}, indent=2)
                  + "\n")
  return str(path)


def load(prior_workdir: str) -> dict[str, Any]:
  """The stored settings ({} when the workdir has none); unknown keys are an error."""
  path = epath.Path(prior_workdir) / FILENAME
  if not prior_workdir or not path.exists():
    return {}
  stored = json.loads(path.read_text())
  unknown = sorted(set(stored) - set(KEYS))
  if unknown:
    raise ValueError(f"{path}: unknown sampling settings {unknown}; known: {list(KEYS)}")
  return stored
