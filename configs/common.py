"""Preset parsing shared by the config files (after big_vision's `configs/common.py`).

`get_config("tiny,far")` names one choice from each of a config's option groups:

    parse_arg("tiny,far", size=("tiny", "base", "paper"), decoder=("far", "mar"))
    -> ConfigDict(size="tiny", decoder="far")

The first choice of each group is its default; an unknown word, or two words from the
same group, is an error naming the valid choices.
"""

import ml_collections


def parse_arg(arg: str | None, **groups: tuple[str, ...]) -> ml_collections.ConfigDict:
  chosen = {}
  owner = {word: group for group, words in groups.items() for word in words}
  for word in filter(None, (w.strip() for w in (arg or "").split(","))):
    if word not in owner:
      valid = "; ".join(f"{g}: {'|'.join(ws)}" for g, ws in groups.items())
      raise ValueError(f"Unknown config preset {word!r}. Valid presets ({valid}).")
    group = owner[word]
    if group in chosen:
      raise ValueError(
          f"Presets {chosen[group]!r} and {word!r} both set {group!r}; pick one.")
    chosen[group] = word
  return ml_collections.ConfigDict(
      {group: chosen.get(group, words[0]) for group, words in groups.items()})
