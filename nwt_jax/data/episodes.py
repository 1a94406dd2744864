"""Episode names: which speaker (or setting) each integer episode id stands for.

A `folder` build of `nwt_clips` numbers its episodes by their folders in sorted order and stores
the names in the dataset's metadata (`info.metadata["episode_names"]`, id order). Training copies
them into each workdir as `episodes.json` (`{"names": [...]}`), so generation can take
`--episode=alice` as well as `--episode=0`:

    names = episodes.from_dataset(data_dir, "nwt_clips/folder_tiny_face")   # ['alice', 'bob']
    episodes.save(workdir, names); episodes.load(workdir)                   # ['alice', 'bob']
    episodes.resolve("bob", names, num_episodes=2)                          # 1
"""

import json
import os

from etils import epath

from nwt_jax import errors

FILE = "episodes.json"  # in a dVAE or prior workdir: {"names": [name of episode 0, 1, ...]}


def from_dataset(data_dir: str, tfds_name: str) -> list[str] | None:
  """The episode names of a built nwt_clips dataset (metadata `episode_names`, else the
  `episode` label's names), or None when it has none (a synthetic build's names are
  `episode_K`, which say nothing: None too)."""
  info = dataset_info(data_dir, tfds_name)
  return names_of(info)


def dataset_info(data_dir: str, tfds_name: str):
  """`tfds.core.DatasetInfo` of a built dataset, read from its files (no builder code needed)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top  (GPU machines lack it)
  where = f"{tfds_name} in {data_dir or 'the default TFDS data_dir'}"
  try:
    builder = tfds.core.read_only_builder.builder_from_files(tfds_name, data_dir=data_dir or None)
  except tfds.core.registered.DatasetNotFoundError:
    raise errors.MissingInput(
        f"No built dataset {where}: build it first, e.g. `tfds build tfds_builders/nwt_clips "
        f"--config=synthetic --data_dir={data_dir or '<data_dir>'}`") from None
  return builder.info


def names_of(info) -> list[str] | None:
  """Episode names of a `DatasetInfo` (see `from_dataset`)."""
  names = (info.metadata or {}).get("episode_names") if info.metadata is not None else None
  if not names and "episode" in info.features:
    names = list(getattr(info.features["episode"], "names", None) or [])
    if all(n == f"episode_{i}" for i, n in enumerate(names)):
      names = None  # the synthetic world's placeholder names
  return [str(n) for n in names] if names else None


def save(workdir: str, names: list[str]) -> str:
  """Writes WORKDIR/episodes.json atomically; returns its path."""
  path = epath.Path(workdir) / FILE
  tmp = path.parent / f".{FILE}.{os.getpid()}.tmp"
  tmp.write_text(json.dumps({"names": list(names)}, indent=1) + "\n")
  tmp.rename(path)
  return str(path)


def load(workdir: str) -> list[str] | None:
  """The names in WORKDIR/episodes.json, or None when the workdir has none."""
  path = epath.Path(workdir) / FILE
  if not workdir or not path.exists():
    return None
  try:
    names = json.loads(path.read_text())["names"]
  except (ValueError, KeyError, TypeError) as e:
    raise errors.InvalidInput(f"{path} is not an episodes file ({e})") from None
  return [str(n) for n in names]


def describe(names: list[str] | None, num_episodes: int) -> str:
  """'alice (0), bob (1)' or '0..N-1' when the episodes have no names."""
  if names:
    return ", ".join(f"{n} ({i})" for i, n in enumerate(names))
  return f"0..{num_episodes - 1}"


def resolve(spec, names: list[str] | None, num_episodes: int, *, flag: str = "--episode") -> int:
  """The episode id of `spec`: an integer id ('3', 3) or a name of `names`. A clear error names
  the episodes there are."""
  text = str(spec).strip()
  if names and text in names:
    index = names.index(text)
  else:
    try:
      index = int(text)
    except ValueError:
      known = (f"the models know {describe(names, num_episodes)}" if names else
               f"the models' episodes have no names (their workdirs hold no {FILE}); use an id "
               f"in 0..{num_episodes - 1}")
      raise errors.GenerateError(f"{flag}={text!r} is no episode: {known}") from None
  if not 0 <= index < num_episodes:
    known = describe(names, num_episodes)
    raise errors.GenerateError(f"episode {index} is out of range: the models know episodes "
                               f"{known}")
  return index
