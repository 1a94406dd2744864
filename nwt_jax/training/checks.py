"""Checks of a training config against its data and its workdir, before anything is compiled or
written (`python -m nwt_jax.train` runs them first).

Each mismatch is one `errors.InvalidInput` whose message names both values and the flag (or the
rebuild) that fixes it:

  dVAE on a built dataset (data.source='tfds'): the frame size (data.height x data.width), the
    episode count (dvae.num_episodes), the audio rate (24 kHz, fixed), the clip length
    (data.frames_per_example, train.eval_frames_per_clip) and the validation split's size
    (train.eval_batch_size);
  prior on tokens: the window (data.frames_per_example <= the tokens' clip length <=...,
    prior.max_frames) and the validation split's size (train.eval_batch_size);
  both: the episode names of the data against those an existing workdir was trained on
    (`episodes.json`, `nwt_jax.data.episodes`).

`episode_names(config)` is what train.py then writes into the workdir.
"""

import json

from etils import epath
import ml_collections

from nwt_jax import errors
from nwt_jax.data import constants
from nwt_jax.data import episodes as episodes_lib
from nwt_jax.data import token_pipeline


def _size(h, w) -> str:
  return f"{h}x{w}"


def dataset_facts(data: ml_collections.ConfigDict) -> dict | None:
  """What a dVAE config's data source holds: frame size, clip length, audio rate, episodes
  (count and names) and split sizes; None for a source with nothing to check (synthetic)."""
  if data.get("source") != "tfds":
    return None
  info = episodes_lib.dataset_info(data.get("data_dir", ""), data.tfds_name)
  video = info.features["video"]
  num_frames, height, width = video.shape[:3]
  episode = info.features["episode"]
  return {
      "name": data.tfds_name,
      "frame_size": (height, width),
      "num_frames": num_frames,
      "sample_rate": getattr(info.features["audio"], "sample_rate", None),
      "num_episodes": episode.num_classes,
      "episode_names": episodes_lib.names_of(info),
      "splits": {name: split.num_examples for name, split in info.splits.items()},
  }


def _check_dvae(config: ml_collections.ConfigDict, facts: dict) -> None:
  data, name = config.data, facts["name"]
  want, have = (data.height, data.width), facts["frame_size"]
  if tuple(want) != tuple(have):
    raise errors.InvalidInput(
        f"frame size: the dataset {name} holds {_size(*have)} (HxW) frames but the config "
        f"trains at {_size(*want)} (data.height x data.width); build the dataset at the "
        f"config's size (nwt_clips folder config size=..., {_size(*want)}) or pass "
        f"--config.data.height={have[0]} --config.data.width={have[1]}")
  if config.dvae.num_episodes != facts["num_episodes"]:
    names = facts["episode_names"]
    listed = f" ({', '.join(names)})" if names else ""
    raise errors.InvalidInput(
        f"episodes: the dataset {name} has {facts['num_episodes']} episodes{listed} but the "
        f"config's dVAE knows {config.dvae.num_episodes} (dvae.num_episodes); pass "
        f"--config.dvae.num_episodes={facts['num_episodes']}")
  if facts["sample_rate"] and facts["sample_rate"] != constants.SAMPLE_RATE:
    raise errors.InvalidInput(
        f"audio rate: the dataset {name} holds {facts['sample_rate']} Hz audio but the models "
        f"take {constants.SAMPLE_RATE} Hz (fixed: nwt_jax.data.constants.SAMPLE_RATE); rebuild "
        f"it with `tfds build tfds_builders/nwt_clips`, which resamples to {constants.SAMPLE_RATE}")
  for field in ("data.frames_per_example", "train.eval_frames_per_clip"):
    section, key = field.split(".")
    frames = config[section][key]
    if frames > facts["num_frames"]:
      raise errors.InvalidInput(
          f"clip length: {field}={frames} frames but the dataset {name}'s clips are "
          f"{facts['num_frames']} frames long; pass --config.{field}={facts['num_frames']} "
          f"(or rebuild with num_frames >= {frames})")
  _check_eval_batch(config, facts["splits"].get(_eval_split(config), 0),
                    f"the dataset {name}")


def _eval_split(config: ml_collections.ConfigDict) -> str:
  return config.train.get("eval_split", "validation")


def _check_eval_batch(config: ml_collections.ConfigDict, clips: int, what: str) -> None:
  batch = config.train.eval_batch_size
  if clips < batch:
    raise errors.InvalidInput(
        f"validation size: {what} has {clips} {_eval_split(config)} clips but "
        f"train.eval_batch_size={batch} (whole batches only); pass "
        f"--config.train.eval_batch_size={max(clips, 1)}"
        + ("" if clips else " after building a dataset with held-out clips"))


def tokens_manifest(config: ml_collections.ConfigDict) -> tuple[str, dict] | None:
  """(root, manifest) of a prior config's tokens, or None when they are not made yet (the
  trainer then says how to make them)."""
  if not (config.data.get("tokens_dir") or config.get("dvae_workdir")):
    return None
  root = token_pipeline.tokens_dir(config)
  if not (epath.Path(root) / token_pipeline.MANIFEST).exists():
    return None
  return root, token_pipeline.read_manifest(root)


def _check_prior(config: ml_collections.ConfigDict, root: str, manifest: dict) -> None:
  frames = config.data.frames_per_example
  if frames > manifest["num_frames"]:
    raise errors.InvalidInput(
        f"clip length: data.frames_per_example={frames} frames but the tokens in {root} are "
        f"clips of {manifest['num_frames']} frames; pass "
        f"--config.data.frames_per_example={manifest['num_frames']}")
  window = frames or manifest["num_frames"]
  if window > config.prior.max_frames:
    raise errors.InvalidInput(
        f"clip length: windows of {window} frames but prior.max_frames={config.prior.max_frames};"
        f" pass --config.prior.max_frames={window} (or --config.data.frames_per_example="
        f"{config.prior.max_frames})")
  split = manifest["splits"].get(_eval_split(config))
  if split is not None and config.data.get("drop_remainder", True):
    _check_eval_batch(config, split["num_clips"], f"the tokens in {root}")


def episode_names(config: ml_collections.ConfigDict, facts: dict | None = None
                  ) -> list[str] | None:
  """The names of the episodes a run trains on: a dVAE's from its dataset's metadata, a
  prior's from its dVAE's workdir (config.dvae_workdir, else the one its tokens record)."""
  if config.get("model") == "dvae":
    facts = facts if facts is not None else dataset_facts(config.data)
    return facts["episode_names"] if facts else None
  if config.get("model") == "prior":
    names = episodes_lib.load(config.get("dvae_workdir", ""))
    if names is None:
      found = tokens_manifest(config)
      dvae_workdir = (found[1].get("dvae") or {}).get("workdir", "") if found else ""
      names = episodes_lib.load(dvae_workdir) if dvae_workdir else None
    return names
  return None


def check_workdir(workdir: str, names: list[str] | None, data: str) -> None:
  """A workdir that was trained on other episodes (its episodes.json) must not be resumed on
  this data."""
  had = episodes_lib.load(workdir) if workdir and epath.Path(workdir).is_dir() else None
  if had is not None and names is not None and had != names:
    raise errors.InvalidInput(
        f"dataset vs workdir: {workdir} was trained on episodes {json.dumps(had)} but "
        f"{data} has {json.dumps(names)}; pass a new --workdir (or the dataset it was trained "
        f"on)")


def check(config: ml_collections.ConfigDict, workdir: str | None = None) -> list[str] | None:
  """Every check for `config` (and the workdir it will train in); returns the episode names
  the run trains on (None: the data has none). Reads only: nothing is written."""
  model = config.get("model")
  if model == "dvae":
    facts = dataset_facts(config.data)
    if facts is None:
      inline = config.data.get("num_episodes")
      if inline is not None and inline > config.dvae.num_episodes:
        raise errors.InvalidInput(
            f"episodes: the synthetic data has {inline} episodes (data.num_episodes) but the "
            f"config's dVAE knows {config.dvae.num_episodes} (dvae.num_episodes); pass "
            f"--config.dvae.num_episodes={inline}")
      return None
    _check_dvae(config, facts)
    names = facts["episode_names"]
    check_workdir(workdir, names, f"the dataset {facts['name']}")
    return names
  if model == "prior":
    found = tokens_manifest(config)
    if found is not None:
      _check_prior(config, *found)
    names = episode_names(config)
    check_workdir(workdir, names, f"the dVAE {config.get('dvae_workdir') or 'of the tokens'}")
    return names
  return None
