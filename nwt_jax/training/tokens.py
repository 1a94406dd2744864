"""Stage 1 -> 2: the frozen dVAE encoder turns every clip of each split into Memcode indices.

The clips are those the dVAE was trained on (its config's `data`), unless the caller names another
source (`synthetic_inline` or `tfds`, as in `nwt_jax.data.input_pipeline`). The output layout is in
`nwt_jax.data.token_pipeline`: a manifest and, per split, shards of `--clips_per_shard` clips with
their codes, log-mel, episode and (synthetic data) truth and mouth-region cells.

Every process takes part: shard i goes to process i % count (`--process_index/--process_count`,
default JAX's own, so one command per host of a pod works; no collectives are needed). A shard is
written to a temporary name and renamed, so rerunning an interrupted command writes only the
shards that are missing. Rerunning into a directory made from another dVAE or other clips is an
error (the manifests differ).
"""

import concurrent.futures
import json

from absl import logging
from etils import epath
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from nwt_jax import errors
from nwt_jax.data import audio as audio_lib
from nwt_jax.data import constants
from nwt_jax.data import input_pipeline
from nwt_jax.data import synthetic
from nwt_jax.data import token_pipeline
from nwt_jax.runtime import compile_options

CLIP_FIELDS = ("source", "data_dir", "tfds_name", "num_frames", "height", "width", "num_episodes",
               "synthetic_seed", "num_train_clips", "num_validation_clips")


def mouth_cells(truth: np.ndarray, episode, frame_size: tuple[int, int],
                grid: tuple[int, int]) -> np.ndarray:
  """Grid cells the mouth can cover, per frame: truth [T, 7] -> bool [T, gh, gw] (a cell is in
  if any of its pixels is in `synthetic.mouth_region`). Only the evaluation reads them."""
  height, width = frame_size
  gh, gw = grid
  region, _ = synthetic.mouth_region(truth, episode, height, width)
  cells = region.reshape(len(region), gh, height // gh, gw, width // gw)
  return cells.any(axis=(2, 4))


def make_encoder(model: nn.Module, params, frames_per_call: int):
  """frames uint8 [N, H, W, 3] -> int32 codes [N, gh, gw, K], in jitted calls of a fixed size."""
  encode = jax.jit(lambda p, x: model.apply({"params": p}, x, method=type(model).encode),
                   compiler_options=compile_options.dvae())

  def run(frames: np.ndarray) -> np.ndarray:
    out = []
    for start in range(0, len(frames), frames_per_call):
      chunk = frames[start:start + frames_per_call]
      pad = frames_per_call - len(chunk)  # one compiled shape for every call
      padded = np.concatenate([chunk, np.zeros((pad,) + chunk.shape[1:], chunk.dtype)])
      out.append(np.asarray(encode(params, jnp.asarray(padded)))[:len(chunk)])
    return np.concatenate(out)

  return run


def clip_data_config(dvae_data: dict | None, **overrides):
  """The clip source's config: input_pipeline's defaults, the dVAE's data fields, then overrides
  (None = keep)."""
  cfg = input_pipeline.default_config()
  cfg.update({k: v for k, v in (dvae_data or {}).items() if k in cfg})
  cfg.update({k: v for k, v in overrides.items() if v is not None})
  if cfg.source not in input_pipeline.SOURCES:
    raise errors.InvalidInput(f"source must be one of {sorted(input_pipeline.SOURCES)}, got "
                              f"{cfg.source!r}")
  return cfg


def jsonable(tree):
  return json.loads(json.dumps(tree, default=str))


def _load_clips(source, indices, pool) -> list[dict]:
  clips = source.load(list(indices), pool)
  for clip in clips:
    clip["video"] = np.asarray(clip["video"][:])  # tfds: decode every frame
  return clips


def _manifest(model, params, data_cfg, first_clip, splits, sizes, clips_per_shard,
              dvae_info) -> dict:
  num_frames, height, width = first_clip["video"].shape[:3]
  codes = jax.eval_shape(
      lambda p, x: model.apply({"params": p}, x, method=type(model).encode),
      params, jax.ShapeDtypeStruct((1, height, width, 3), jnp.uint8))
  gh, gw, heads = codes.shape[1:]
  return jsonable({
      "format": token_pipeline.FORMAT_VERSION,
      "dvae": dvae_info,
      "data": {k: data_cfg[k] for k in CLIP_FIELDS},
      "grid": [gh, gw], "code_heads": heads, "num_codes": int(model.num_codes),
      "num_episodes": int(model.num_episodes),
      "frame_size": [height, width], "num_frames": num_frames,
      "mel_bins": constants.N_MELS,
      "has_truth": "truth" in first_clip,
      "splits": {split: {"num_clips": sizes[split], "clips_per_shard": clips_per_shard,
                         "num_shards": -(-sizes[split] // clips_per_shard)}
                 for split in splits},
  })


def _check_or_write_manifest(root: str, manifest: dict, process_index: int) -> None:
  path = epath.Path(root) / token_pipeline.MANIFEST
  if path.exists():
    existing = token_pipeline.read_manifest(root)
    if existing != manifest:
      differ = sorted(k for k in existing.keys() | manifest.keys()
                      if existing.get(k) != manifest.get(k))
      raise errors.InvalidInput(f"{root} holds tokens made differently (manifest fields {differ} "
                                "differ); tokenize into another --output, or delete it.")
  elif process_index == 0:
    token_pipeline.write_json_atomic(str(path), manifest)


def tokenize(model: nn.Module, params, data_cfg, output: str, *, dvae_info: dict,
             splits=input_pipeline.SPLITS, clips_per_shard: int = 64, encode_batch: int = 256,
             process_index: int = 0, process_count: int = 1) -> list[str]:
  """Writes this process's missing shards of `splits`; returns the paths it wrote.

  `model` is a `DVAE` (anything with `encode`, `num_codes` and `num_episodes`), `params` its
  parameters, `data_cfg` a full input_pipeline data config naming the clip source.
  """
  if not 0 <= process_index < process_count:
    raise errors.InvalidInput(f"process_index {process_index} not in [0, {process_count})")
  unknown = sorted(set(splits) - set(input_pipeline.SPLITS))
  if unknown:
    raise errors.InvalidInput(f"unknown splits {unknown}; the clips have splits "
                              f"{list(input_pipeline.SPLITS)}")
  params = nn.unbox(params)
  sources = {split: input_pipeline.SOURCES[data_cfg.source](data_cfg, split) for split in splits}
  sizes = {split: len(source) for split, source in sources.items()}
  with concurrent.futures.ThreadPoolExecutor(max(1, data_cfg.num_workers)) as pool:
    first = _load_clips(sources[splits[0]], [0], pool)[0]
    manifest = _manifest(model, params, data_cfg, first, splits, sizes, clips_per_shard,
                         dvae_info)
    epath.Path(output).mkdir(parents=True, exist_ok=True)
    _check_or_write_manifest(output, manifest, process_index)
    encode = make_encoder(model, params, encode_batch)
    frame_size, grid = tuple(manifest["frame_size"]), tuple(manifest["grid"])
    code_dtype = np.int16 if manifest["num_codes"] <= np.iinfo(np.int16).max else np.int32
    written = []
    for split in splits:
      (epath.Path(output) / split).mkdir(parents=True, exist_ok=True)
      count = manifest["splits"][split]["num_shards"]
      todo = [i for i in token_pipeline.missing_shards(output, manifest, split)
              if i % process_count == process_index]
      logging.info("%s: %d clips in %d shards; process %d/%d writes %d missing.", split,
                   sizes[split], count, process_index, process_count, len(todo))
      for shard in todo:
        indices = range(shard * clips_per_shard, min((shard + 1) * clips_per_shard, sizes[split]))
        clips = _load_clips(sources[split], indices, pool)
        arrays = _encode_clips(clips, encode, manifest, frame_size, grid)
        arrays["clip"] = np.asarray(indices, np.int64)
        arrays["codes"] = arrays["codes"].astype(code_dtype)
        path = token_pipeline.shard_path(output, split, shard, count)
        token_pipeline.write_shard(path, arrays)
        written.append(path)
        logging.info("Wrote %s (%d clips).", path, len(indices))
  return written


def _encode_clips(clips, encode, manifest, frame_size, grid) -> dict[str, np.ndarray]:
  num_frames = manifest["num_frames"]
  for clip in clips:
    if clip["video"].shape[:3] != (num_frames,) + frame_size:
      raise errors.InvalidInput(f"clips differ in shape: {clip['video'].shape[:3]} vs "
                                f"{(num_frames,) + frame_size}; the prior needs clips of one length")
  video = np.stack([c["video"] for c in clips])  # [N, T, H, W, 3]
  codes = encode(video.reshape((-1,) + video.shape[2:]))  # [N*T, gh, gw, K]
  mel_rows = constants.MEL_PER_FRAME * num_frames
  mels = [c["mel"] if "mel" in c else audio_lib.log_mel(c["audio"]) for c in clips]
  out = {"codes": codes.reshape(video.shape[:2] + codes.shape[1:]),
         "mel": np.stack([np.asarray(m[:mel_rows], np.float32) for m in mels]),
         "episode": np.asarray([c["episode"] for c in clips], np.int32)}
  if manifest["has_truth"]:
    out["truth"] = np.stack([np.asarray(c["truth"], np.float32) for c in clips])
    out["mouth"] = np.stack([mouth_cells(c["truth"], c["episode"], frame_size, grid)
                             for c in clips])
  return out
