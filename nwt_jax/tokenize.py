"""Stage 1 -> 2: the frozen dVAE encoder turns every clip of each split into Memcode indices.

    python -m nwt_jax.tokenize --dvae_workdir=runs/dvae --output=runs/dvae/tokens
    python -m nwt_jax.tokenize --dvae_workdir=runs/dvae --output=T --source=tfds \\
        --data_dir=data/tfds --tfds_name=nwt_clips/synthetic

The clips are those the dVAE was trained on (its config's `data`), unless the flags name another
source (`synthetic_inline` or `tfds`, as in `nwt_jax.input_pipeline`). The output layout is in
`nwt_jax.token_pipeline`: a manifest and, per split, shards of `--clips_per_shard` clips with
their codes, log-mel, episode and (synthetic data) truth and mouth-region cells.

Every process takes part: shard i goes to process i % count (`--process_index/--process_count`,
default JAX's own, so one command per host of a pod works; no collectives are needed). A shard is
written to a temporary name and renamed, so rerunning an interrupted command writes only the
shards that are missing. Rerunning into a directory made from another dVAE or other clips is an
error (the manifests differ).
"""

import concurrent.futures
import json
import os
import sys

from absl import app
from absl import flags
from absl import logging
from etils import epath
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from nwt_jax import audio as audio_lib
from nwt_jax import compile_options
from nwt_jax import errors
from nwt_jax import host_malloc
from nwt_jax import input_pipeline
from nwt_jax import synthetic
from nwt_jax import token_pipeline

FLAGS = flags.FLAGS
def _define_flags() -> None:
  """The command-line flags, defined only when the module runs as a program (tests and
  other modules import it, and absl allows one definition of each name per process)."""
  flags.DEFINE_string("dvae_workdir", None, "Stage-1 workdir (`nwt_jax.train_dvae`).")
  flags.DEFINE_integer("step", None, "dVAE checkpoint step (default: the latest).")
  flags.DEFINE_string("output", None, "Tokens directory (default: <dvae_workdir>/tokens).")
  flags.DEFINE_list("splits", list(input_pipeline.SPLITS), "Splits to tokenize.")
  flags.DEFINE_integer("clips_per_shard", 64, "Clips per shard file.")
  flags.DEFINE_integer("encode_batch", 256, "Frames per encoder call.")
  flags.DEFINE_enum("source", None, sorted(input_pipeline.SOURCES),
                    "Clip source (default: the dVAE config's data.source).")
  flags.DEFINE_string("data_dir", None, "source=tfds: TFDS data_dir.")
  flags.DEFINE_string("tfds_name", None, "source=tfds: '<dataset>/<config>[:version]'.")
  flags.DEFINE_integer("num_train_clips", None, "source=synthetic_inline: train clips.")
  flags.DEFINE_integer("num_validation_clips", None, "source=synthetic_inline: validation clips.")
  flags.DEFINE_integer("process_index", None, "This process (default: jax.process_index()).")
  flags.DEFINE_integer("process_count", None, "Processes (default: jax.process_count()).")


def mouth_cells(truth: np.ndarray, episode, frame_size: tuple[int, int],
                grid: tuple[int, int]) -> np.ndarray:
  """Grid cells the mouth can cover, per frame: truth [T, 7] -> bool [T, gh, gw].

  The mouth region is where the frame drawn from `truth` with the mouth fully open differs from it
  drawn closed (the rendering geometry of `nwt_jax.synthetic`: camera, zoom, tilt and mouth width
  as in the frame), grown by one pixel; a cell is in it if any of its pixels is.
  """
  height, width = frame_size
  gh, gw = grid
  drawn = []
  for mouth_open in (0.0, 1.0):
    edited = np.array(truth, np.float32)
    edited[:, synthetic.TRUTH_KEYS.index("mouth_open")] = mouth_open
    drawn.append(synthetic.render_frames(edited, episode, height, width))
  changed = np.any(drawn[0] != drawn[1], axis=-1)  # [T, H, W]
  region = changed.copy()
  for axis in (1, 2):
    for shift in (-1, 1):
      region |= np.roll(changed, shift, axis=axis)
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
    raise errors.InvalidInput(f"source must be one of {sorted(input_pipeline.SOURCES)}, got {cfg.source!r}")
  return cfg


# Data fields that choose the clips (the rest say how a trainer batches them).
CLIP_FIELDS = ("source", "data_dir", "tfds_name", "num_frames", "height", "width", "num_episodes",
               "synthetic_seed", "num_train_clips", "num_validation_clips")


def _jsonable(tree):
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
  return _jsonable({
      "format": token_pipeline.FORMAT_VERSION,
      "dvae": dvae_info,
      "data": {k: data_cfg[k] for k in CLIP_FIELDS},
      "grid": [gh, gw], "code_heads": heads, "num_codes": int(model.num_codes),
      "num_episodes": int(model.num_episodes),
      "frame_size": [height, width], "num_frames": num_frames,
      "mel_bins": audio_lib.N_MELS,
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
      raise errors.InvalidInput(f"{root} holds tokens made differently (manifest fields {differ} differ); "
                       "tokenize into another --output, or delete it.")
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
  mel_rows = input_pipeline.MEL_FRAMES_PER_FRAME * num_frames
  mels = [c["mel"] if "mel" in c else audio_lib.log_mel(c["audio"]) for c in clips]
  out = {"codes": codes.reshape(video.shape[:2] + codes.shape[1:]),
         "mel": np.stack([np.asarray(m[:mel_rows], np.float32) for m in mels]),
         "episode": np.asarray([c["episode"] for c in clips], np.int32)}
  if manifest["has_truth"]:
    out["truth"] = np.stack([np.asarray(c["truth"], np.float32) for c in clips])
    out["mouth"] = np.stack([mouth_cells(c["truth"], c["episode"], frame_size, grid)
                             for c in clips])
  return out


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  host_malloc.tune_for_cpu()
  try:
    _tokenize_from_flags()
  except errors.UserError as e:  # bad input: one line, exit code 1, no traceback
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)


def _tokenize_from_flags() -> None:
  from nwt_jax import train_dvae  # pylint: disable=g-import-not-at-top  (stage 1's trainer)
  model, params, dvae_config = train_dvae.restore_frozen(FLAGS.dvae_workdir, FLAGS.step)
  step = FLAGS.step
  if step is None:
    from nwt_jax import checkpoint  # pylint: disable=g-import-not-at-top
    with checkpoint.Checkpointer(FLAGS.dvae_workdir, dvae_config) as ckpt:
      step = ckpt.latest_step()
  dvae_json = dvae_config.to_dict() if hasattr(dvae_config, "to_dict") else dict(dvae_config)
  data_cfg = clip_data_config(
      dvae_json.get("data"), source=FLAGS.source, data_dir=FLAGS.data_dir,
      tfds_name=FLAGS.tfds_name, num_train_clips=FLAGS.num_train_clips,
      num_validation_clips=FLAGS.num_validation_clips)
  output = FLAGS.output or str(epath.Path(FLAGS.dvae_workdir) / "tokens")
  workdir = FLAGS.dvae_workdir  # recorded absolute (a gs:// path already is)
  workdir = workdir if "://" in workdir else os.path.abspath(workdir)
  index = jax.process_index() if FLAGS.process_index is None else FLAGS.process_index
  count = jax.process_count() if FLAGS.process_count is None else FLAGS.process_count
  written = tokenize(
      model, params, data_cfg, output,
      dvae_info={"workdir": workdir, "step": step,
                 "config": _jsonable(dvae_json)},
      splits=tuple(FLAGS.splits), clips_per_shard=FLAGS.clips_per_shard,
      encode_batch=FLAGS.encode_batch, process_index=index, process_count=count)
  logging.info("Done: wrote %d shards into %s.", len(written), output)


if __name__ == "__main__":
  _define_flags()
  flags.mark_flags_as_required(["dvae_workdir"])
  app.run(main)
