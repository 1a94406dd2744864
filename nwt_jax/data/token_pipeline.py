"""Tokenized clips on disk (what `nwt_jax.tokenize` writes) and the prior's batches from them.

Layout of a tokens directory:

    manifest.json                  what made the tokens: the dVAE (workdir, step, config), the clip
                                   data config, grid [gh, gw], code_heads K, num_codes, num_episodes,
                                   frame_size [H, W], num_frames T, has_truth, and per split the
                                   clip count, clips_per_shard and shard count
    <split>/shard-00003-of-00016/  one directory of .npy files per shard of `clips_per_shard`
                                   consecutive clips of the split (the last may hold fewer):
        clip.npy     int64 [N]                the clip's index in the split
        codes.npy    int16|int32 [N, T, gh, gw, K]  Memcode indices (DVAE.encode, eval mode)
        mel.npy      float32 [N, 4T, 80]      log-mel of the clip's audio
        episode.npy  int32 [N]
        truth.npy    float32 [N, T, 7]        synthetic sources only (TRUTH_KEYS order)
        mouth.npy    bool [N, T, gh, gw]      synthetic sources only: grid cells the mouth can cover

A shard is written into `<name>.tmp-<pid>` and renamed when complete, so a directory named
`shard-*-of-*` is always whole; an interrupted tokenization leaves only missing shards to redo.
Local files are read memory-mapped, so a corpus larger than memory can be served; paths go
through `etils.epath`, so a `gs://` tokens directory works too (its shards are read into memory).

The iterator is `input_pipeline.DataIterator` over a `TokenSource`: the same sampler (global batch
k a pure function of seed and k, each process loading only its rows, `get_state`/`set_state`
resuming at the exact next batch), with windows of `frames_per_example` frames cut from codes,
mel, truth and mouth alike:

    it = create_iterator(config.data, 'train', seed=config.seed,
                         process_index=jax.process_index(), process_count=jax.process_count())
    batch = next(it)  # codes int32 [B', T', gh, gw, K], mel float32 [B', 4T', 80], episode
                      # int32 [B'], and truth float32 [B', T', 7], mouth bool [B', T', gh, gw]
                      # when the tokens have them; B' = batch_size / process_count.
"""

import concurrent.futures
import io
import json
import os

from etils import epath
import ml_collections
import numpy as np

from nwt_jax import errors
from nwt_jax.data import constants
from nwt_jax.data import input_pipeline

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
FIELDS = ("clip", "codes", "mel", "episode", "truth", "mouth")


def default_config() -> ml_collections.ConfigDict:
  """Every option of the token data source with its default."""
  c = input_pipeline.batching_config("tokens", num_workers=2)  # the only source of this module
  c.tokens_dir = ""  # output of `nwt_jax.tokenize` ('' = <dvae_workdir>/tokens, see tokens_dir())
  # Train windows also carry 'anchor', one frame of the same clip for the prior's identity anchor:
  # 'distant' (outside the window where the clip allows) or '' (none: the window's first frame).
  c.anchor_frame = ""
  return c


def tokens_dir(config: ml_collections.ConfigDict) -> str:
  """`config.data.tokens_dir`, or `<config.dvae_workdir>/tokens` when it is empty."""
  path = config.data.get("tokens_dir", "")
  if path:
    return path
  if not config.get("dvae_workdir"):
    raise errors.InvalidInput("Set config.data.tokens_dir (the output of `python -m nwt_jax.tokenize`) or "
                     "config.dvae_workdir (tokens then live in <dvae_workdir>/tokens).")
  return str(epath.Path(config.dvae_workdir) / "tokens")


def shard_name(index: int, count: int) -> str:
  return f"shard-{index:05d}-of-{count:05d}"


def shard_path(root: str, split: str, index: int, count: int) -> str:
  return str(epath.Path(root) / split / shard_name(index, count))


def read_manifest(root: str) -> dict:
  path = epath.Path(root) / MANIFEST
  if not path.exists():
    raise errors.MissingInput(
        f"No {MANIFEST} in {root}: tokenize the clips first, e.g. `python -m nwt_jax.tokenize "
        f"--dvae_workdir=<stage-1 workdir> --output={root}`.")
  return json.loads(path.read_text())


def write_json_atomic(path: str, value: dict) -> None:
  path = epath.Path(path)
  tmp = path.parent / f"{path.name}.tmp-{os.getpid()}"
  tmp.write_text(json.dumps(value, indent=1, sort_keys=True))
  tmp.replace(path)


def write_shard(path: str, arrays: dict[str, np.ndarray]) -> None:
  """Writes a shard's arrays into `path` (a directory) atomically: temp directory, then rename."""
  path = epath.Path(path)
  tmp = path.parent / f"{path.name}.tmp-{os.getpid()}"
  tmp.rmtree(missing_ok=True)
  tmp.mkdir(parents=True)
  for key, value in arrays.items():
    with (tmp / f"{key}.npy").open("wb") as f:
      np.save(f, value)
  tmp.rename(path)  # atomic locally; fails if another writer finished the same shard first


def missing_shards(root: str, manifest: dict, split: str) -> list[int]:
  count = manifest["splits"][split]["num_shards"]
  return [i for i in range(count) if not epath.Path(shard_path(root, split, i, count)).is_dir()]


class TokenSource:
  """One split of a tokens directory: len() clips, load(indices) -> clip dicts (memory-mapped)."""

  def __init__(self, root: str, split: str):
    self.manifest = read_manifest(root)
    if self.manifest.get("format") != FORMAT_VERSION:
      raise errors.InvalidInput(f"{root}: token format {self.manifest.get('format')}, this code reads "
                       f"{FORMAT_VERSION}; re-run `python -m nwt_jax.tokenize`.")
    if split not in self.manifest["splits"]:
      raise errors.InvalidInput(f"{root} holds splits {sorted(self.manifest['splits'])}, not {split!r}")
    info = self.manifest["splits"][split]
    missing = missing_shards(root, self.manifest, split)
    if missing:
      raise errors.MissingInput(
          f"{root}/{split}: {len(missing)} of {info['num_shards']} shards are missing (e.g. "
          f"{shard_name(missing[0], info['num_shards'])}); tokenization was interrupted: rerun "
          "the same `python -m nwt_jax.tokenize` command to write only those.")
    self._num = info["num_clips"]
    self._per_shard = info["clips_per_shard"]
    self._paths = [shard_path(root, split, i, info["num_shards"])
                   for i in range(info["num_shards"])]
    self._shards: dict[int, dict[str, np.ndarray]] = {}

  def __len__(self) -> int:
    return self._num

  def _shard(self, index: int) -> dict[str, np.ndarray]:
    if index not in self._shards:  # a dict insert is atomic: worker threads may race harmlessly
      files = sorted(epath.Path(self._paths[index]).glob("*.npy"))
      self._shards[index] = {f.name[:-4]: _load_array(f) for f in files}
    return self._shards[index]

  def clip(self, index: int) -> dict[str, np.ndarray]:
    shard = self._shard(index // self._per_shard)
    row = index % self._per_shard
    return {key: value[row] for key, value in shard.items()}

  def load(self, indices: list[int], pool: concurrent.futures.Executor) -> list[dict]:
    del pool  # memory-mapped rows: nothing worth parallelising
    return [self.clip(i) for i in indices]


def _load_array(path: epath.Path) -> np.ndarray:
  if "://" in str(path):  # remote (gs://): no memory map
    return np.load(io.BytesIO(path.read_bytes()))
  return np.load(path, mmap_mode="r")


def _check_anchor_frame(value: str) -> None:
  if value not in ("", "distant"):
    raise errors.InvalidInput(f"data.anchor_frame must be '' or 'distant', got {value!r}")


def distant_frame(seed: int, step: int, row: int, num_frames: int, start: int, frames: int
                  ) -> int:
  """A frame of a clip of `num_frames`, uniform over those outside the window [start, start +
  frames) (over the window itself if it is the whole clip): a pure function of its arguments."""
  rng = np.random.default_rng([seed, step, row, 0xA5C0])
  outside = num_frames - frames
  if outside <= 0:
    return int(rng.integers(0, num_frames))
  pick = int(rng.integers(0, outside))
  return pick + frames if pick >= start else pick


class TokenIterator(input_pipeline.DataIterator):
  """`input_pipeline.DataIterator` over tokenized clips: windows of codes, mel, truth, mouth and,
  with `anchor_frame='distant'`, an anchor frame of the same clip.

  Why a distant anchor: the anchor's look (identity, camera, pose) is the clip's, while its mouth
  belongs to another moment. With the window's own first frame as the anchor, the prior learns to
  copy the anchor's mouth (8 frames apart, mouths agree); in generation the anchor is one opening
  frame for the whole stream, so every frame's mouth is pulled towards the opening frame's
  (measured: the per-clip mean mouth opening of generated video follows it at r 0.95).
  """

  def __init__(self, source, *, anchor_frame: str = "", **kwargs):
    _check_anchor_frame(anchor_frame)
    super().__init__(source, **kwargs)
    self._anchor_frame = anchor_frame

  def _window(self, clip: dict, step: int, row: int) -> dict:
    num_frames = len(clip["codes"])
    frames = self._frames or num_frames
    if frames > num_frames:
      raise ValueError(f"frames_per_example {frames} exceeds the clips' {num_frames} frames")
    t0 = input_pipeline._window_start(  # pylint: disable=protected-access  (the same sampler)
        self._seed, step, row, num_frames - frames)
    time = slice(t0, t0 + frames)
    mel = slice(t0 * constants.MEL_PER_FRAME, (t0 + frames) * constants.MEL_PER_FRAME)
    out = {"codes": np.asarray(clip["codes"][time], np.int32),
           "mel": np.asarray(clip["mel"][mel], np.float32),
           "episode": np.int32(clip["episode"])}
    if "truth" in clip:
      out["truth"] = np.asarray(clip["truth"][time], np.float32)
    if "mouth" in clip:
      out["mouth"] = np.asarray(clip["mouth"][time], bool)
    if self._anchor_frame:
      at = distant_frame(self._seed, step, row, num_frames, t0, frames)
      out["anchor"] = np.asarray(clip["codes"][at], np.int32)
    return out


def create_iterator(data_config: ml_collections.ConfigDict, split: str, *, seed: int,
                    root: str | None = None, process_index: int = 0,
                    process_count: int = 1, **overrides) -> TokenIterator:
  """This process's rows of global batches of `split` of the tokens in `root` (default:
  `data_config.tokens_dir`). `overrides` replace data config fields (e.g. batch_size for eval)."""
  cfg = default_config()
  unknown = set(data_config.keys()) - set(cfg.keys())
  if unknown:
    raise errors.InvalidInput(f"unknown token data fields {sorted(unknown)}; known: {sorted(cfg.keys())}")
  cfg.update(data_config)
  cfg.update(overrides)
  _check_anchor_frame(cfg.anchor_frame)
  if cfg.source != "tokens":
    raise errors.InvalidInput(f"the prior reads data.source='tokens', got {cfg.source!r}")
  train = split == "train"
  return TokenIterator(
      TokenSource(root or cfg.tokens_dir, split), batch_size=cfg.batch_size,
      frames_per_example=cfg.frames_per_example, shuffle=cfg.shuffle and train,
      repeat=cfg.repeat and train, drop_remainder=cfg.drop_remainder, seed=seed,
      process_index=process_index, process_count=process_count, prefetch=cfg.prefetch,
      num_workers=cfg.num_workers, anchor_frame=cfg.anchor_frame if train else "")
