"""nwt_clips: talking-head clips (frames + 24 kHz audio + episode label) for nwt_jax.

Configs:
  synthetic (default): clips of `nwt_jax.data.synthetic`, a deterministic function of seeds; train and
    validation use disjoint seeds (`nwt_jax.data.input_pipeline.synthetic_clip_seed`), so the in-memory
    `synthetic_inline` source yields the very same clips.
  folder: `<manual_dir>/<episode_name>/*.mp4|*.mov|*.mkv|*.webm` of any size, frame rate, sample
    rate and channel count -> 30 fps, 24 kHz mono, centre-cropped, resized, cut into clips of
    `num_frames`. Files go to train or validation by a hash of their path (a video's clips never
    straddle splits). Files without audio, that fail to decode, or shorter than one clip are
    skipped with one log line each and counted in the build summary (logged at the end and stored
    in the dataset's `metadata.json` as `build_summary`).

Other sizes without code changes: `--config='{"name": "synthetic_t8", "num_frames": 8, ...}'`
(any `NwtClipsConfig` field). Beam: with `--beam_pipeline_options=...` the splits are generated
by Apache Beam (one element per clip seed or per video file); otherwise by a plain generator.

Written as ArrayRecord by default (random access, which exact resume and per-process reading in
`nwt_jax.data.input_pipeline` need); `--file_format=tfrecord` still works for tf.data readers.
"""

import collections
import concurrent.futures
import dataclasses
import hashlib
import sys
from collections.abc import Callable, Iterator

from absl import logging
from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from nwt_jax.data import input_pipeline
from nwt_jax.data import synthetic
from nwt_jax.data import video_io

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm")
FPS = synthetic.FPS
SAMPLE_RATE = synthetic.SAMPLE_RATE
SAMPLES_PER_FRAME = synthetic.SAMPLES_PER_FRAME
SKIP_REASONS = ("no_video", "no_audio", "decode_error", "too_short")
_COUNTER_NAMESPACE = "nwt_clips"


@dataclasses.dataclass(eq=False, kw_only=True)
class NwtClipsConfig(tfds.core.BuilderConfig):
  """What a build makes: the source and the clip format."""
  source: str = "synthetic"  # 'synthetic' (from seeds) | 'folder' (videos in manual_dir)
  num_frames: int = 32  # T, frames per clip (30 fps)
  height: int = 64  # H of every frame
  width: int = 56  # W of every frame
  frame_encoding: str = ""  # 'png' | 'jpeg' (q95, ~4x smaller); '': png if synthetic, else jpeg
  num_train_clips: int = 1024  # synthetic: clips in the train split
  num_validation_clips: int = 128  # synthetic: clips in the validation split
  num_episodes: int = synthetic.NUM_EPISODES  # synthetic: labelled episodes drawn from
  seed: int = 0  # synthetic: base seed (a different seed gives a different dataset)
  validation_fraction: float = 0.1  # folder: share of video files (by path hash) in validation

  def __post_init__(self):
    if self.source not in ("synthetic", "folder"):
      raise ValueError(f"source must be 'synthetic' or 'folder', got {self.source!r}")
    for field in ("num_frames", "height", "width", "num_train_clips", "num_validation_clips"):
      if not isinstance(getattr(self, field), int) or getattr(self, field) <= 0:
        raise ValueError(f"{field} must be a positive int, got {getattr(self, field)!r}")
    self.frame_encoding = self.frame_encoding or ("png" if self.source == "synthetic" else "jpeg")
    if self.frame_encoding not in ("png", "jpeg"):
      raise ValueError(f"frame_encoding must be 'png' or 'jpeg', got {self.frame_encoding!r}")
    if not 1 <= self.num_episodes <= synthetic.NUM_EPISODES:
      raise ValueError(f"num_episodes must be in [1, {synthetic.NUM_EPISODES}], "
                       f"got {self.num_episodes}")
    if not isinstance(self.seed, int) or self.seed < 0:
      raise ValueError(f"seed must be a non-negative int, got {self.seed!r}")
    if not 0.0 < self.validation_fraction < 1.0:
      raise ValueError(f"validation_fraction must be in (0, 1), got {self.validation_fraction}")


class Builder(tfds.core.GeneratorBasedBuilder):
  """Talking-head clips: video, 24 kHz audio, episode label (and synthetic per-frame truth)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release: synthetic and folder configs."}
  BUILDER_CONFIGS = [
      NwtClipsConfig(name="synthetic", description="Clips of the synthetic talking head, 64x56."),
      NwtClipsConfig(name="folder", source="folder", height=256, width=224,
                     description="Clips cut from <manual_dir>/<episode>/<video files>, 256x224."),
  ]
  DEFAULT_BUILDER_CONFIG_NAME = "synthetic"
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
  Only the `folder` config reads manual_dir. Lay out your videos as
    <manual_dir>/<episode_name>/<video>.mp4 (or .mov, .mkv, .webm)
  one sub-directory per episode (its name becomes the episode label), then run
    tfds build tfds_builders/nwt_clips --config=folder --manual_dir=<manual_dir>
  """

  def __init__(self, *, file_format=None, **kwargs):
    super().__init__(file_format=file_format, **kwargs)
    # ArrayRecord (random access) unless asked otherwise or already built in another format.
    if file_format is None and not self.is_prepared():
      self.info.set_file_format(tfds.core.FileFormat.ARRAY_RECORD, override=True)
    self._use_beam = False
    self._summary = collections.Counter()  # files, skips and clips of the current build
    self._episodes, self._files = [], []  # folder: set by _inspect_videos

  def _info(self) -> tfds.core.DatasetInfo:
    cfg = self.builder_config
    if cfg.source == "synthetic":
      episode = tfds.features.ClassLabel(
          names=[f"episode_{i}" for i in range(cfg.num_episodes)])
    else:
      episode = tfds.features.ClassLabel()  # names: the manual_dir sub-directories
    features = {
        "video": tfds.features.Video(
            (cfg.num_frames, cfg.height, cfg.width, 3), encoding_format=cfg.frame_encoding),
        "audio": tfds.features.Audio(
            shape=(cfg.num_frames * SAMPLES_PER_FRAME,), dtype=np.int16, sample_rate=SAMPLE_RATE),
        "episode": episode,
        "clip_id": tfds.features.Text(),
        "source": tfds.features.Text(),
    }
    if cfg.source == "synthetic":
      features["truth"] = tfds.features.Tensor(
          shape=(cfg.num_frames, len(synthetic.TRUTH_KEYS)), dtype=np.float32)
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict(features),
        metadata=tfds.core.MetadataDict(),
        # Stored in key order (clip index; file, then clip): readers shuffle by index, and the
        # synthetic build then lines up with `synthetic_inline` clip for clip.
        disable_shuffling=True,
    )

  def _make_download_manager(self, download_dir, download_config):
    dl_manager = super()._make_download_manager(download_dir, download_config)
    self._summary = collections.Counter()
    if self.builder_config.source == "folder":
      # Before TFDS writes anything: a missing, empty or unusable manual_dir fails here.
      self._episodes, self._files = self._inspect_videos(dl_manager.manual_dir)
    return dl_manager

  def _inspect_videos(self, manual_dir: epath.Path):
    """(episode names, usable files as (number, episode, path)); logs and counts the rest.

    Headers are read before splitting so that a skipped file cannot leave a split empty (TFDS
    cannot write one); errors found only by decoding are counted later, in the workers.
    """
    episodes = find_videos(manual_dir)
    files = [(number, episode, path) for number, (episode, path) in enumerate(
        (e, p) for e, paths in sorted(episodes.items()) for p in paths)]
    self._summary["files"] = len(files)
    min_seconds = self.builder_config.num_frames / FPS
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
      problems = list(pool.map(lambda f: header_problem(f[2], min_seconds), files))
    usable = []
    for file, problem in zip(files, problems):
      if problem:
        _skip(relative_name(file[1], file[2]), *problem, count=self._count)
      else:
        usable.append(file)
    if len(usable) < 2:
      raise ValueError(
          f"nwt_clips/folder: {len(usable)} usable video file(s) of {len(files)} in "
          f"{manual_dir}; at least 2 are needed (train and validation never share a video). "
          f"Nothing was written.")
    return sorted(episodes), usable

  def _download_and_prepare(self, dl_manager, download_config=None):
    # Beam only when the user asked for it: `_generate_examples` returns a PTransform then.
    self._use_beam = bool(download_config and (download_config.beam_runner
                                               or download_config.beam_options))
    super()._download_and_prepare(dl_manager, download_config)
    summary = dict(self._summary)
    if self.builder_config.source == "folder":
      summary = {"files": summary.get("files", 0), "files_used": summary.get("files_used", 0),
                 **{f"skipped_{r}": summary.get(r, 0) for r in SKIP_REASONS},
                 "partial_decode": summary.get("partial_decode", 0)}
    summary.update({f"clips_{name}": split.num_examples
                    for name, split in self.info.splits.items()})
    logging.info("nwt_clips/%s build summary: %s", self.builder_config.name, summary)
    self.info.metadata["build_summary"] = summary

  def _process_pipeline_result(self, pipeline_result) -> None:
    import apache_beam as beam  # pylint: disable=g-import-not-at-top
    query = pipeline_result.metrics().query(
        beam.metrics.MetricsFilter().with_namespace(_COUNTER_NAMESPACE))
    for counter in query["counters"]:
      value = counter.committed if counter.committed is not None else counter.attempted
      self._summary[counter.key.metric.name] += value

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    cfg = self.builder_config
    if cfg.source == "synthetic":
      return {split: self._generate_examples(split=split, indices=range(count))
              for split, count in (("train", cfg.num_train_clips),
                                   ("validation", cfg.num_validation_clips))}
    self.info.features["episode"].names = self._episodes
    validation = validation_files([relative_name(e, p) for _, e, p in self._files],
                                  cfg.validation_fraction)
    files = {"train": [], "validation": []}
    for file in self._files:
      files["validation" if relative_name(*file[1:]) in validation else "train"].append(file)
    return {split: self._generate_examples(files=f) for split, f in files.items()}

  def _generate_examples(self, *, split=None, indices=None, files=None):
    cfg = self.builder_config
    if self._use_beam:
      # pylint: disable=g-import-not-at-top
      import apache_beam as beam
      from apache_beam.internal.cloudpickle import cloudpickle
      # pylint: enable=g-import-not-at-top
      # tfds loads this module from a path that Beam's workers cannot import: ship its functions
      # and config class by value (workers still need `nwt_jax` installed).
      cloudpickle.register_pickle_by_value(sys.modules[__name__])
      # Reshuffle: Create emits one bundle; this spreads seeds / files over the workers.
      if files is None:
        return (beam.Create(list(indices)) | beam.Reshuffle()
                | beam.Map(synthetic_example, split=split, cfg=cfg))
      return (beam.Create(files) | beam.Reshuffle()
              | beam.FlatMap(file_examples, cfg=cfg, count=_beam_count))
    if files is None:
      return (synthetic_example(i, split=split, cfg=cfg) for i in indices)
    return (example for file in files
            for example in file_examples(file, cfg=cfg, count=self._count))

  def _count(self, name: str, value: int = 1) -> None:
    self._summary[name] += value


def _beam_count(name: str, value: int = 1) -> None:
  import apache_beam as beam  # pylint: disable=g-import-not-at-top
  beam.metrics.Metrics.counter(_COUNTER_NAMESPACE, name).inc(value)


# ----------------------------------------------------------------------------------------------
# Examples (module-level functions: Beam pickles them into its workers)


def synthetic_example(index: int, *, split: str, cfg: NwtClipsConfig):
  """(key, example) for clip `index` of a synthetic split."""
  seed = input_pipeline.synthetic_clip_seed(split, index, cfg.seed)
  clip = synthetic.make_clip(seed, num_frames=cfg.num_frames, height=cfg.height,
                             width=cfg.width, num_episodes=cfg.num_episodes)
  clip_id = f"{split}/{index:07d}"
  return index, {
      "video": clip["video"], "audio": clip["audio"], "episode": clip["episode"],
      "clip_id": clip_id, "source": f"synthetic seed={seed}", "truth": clip["truth"],
  }


def find_videos(manual_dir: epath.Path) -> dict[str, list[epath.Path]]:
  """{episode name: sorted video paths} from `manual_dir/<episode>/<video>`."""
  episodes = {}
  for directory in sorted(manual_dir.iterdir()):
    if directory.is_dir() and not directory.name.startswith("."):
      videos = sorted(p for p in directory.iterdir()
                      if p.suffix.lower() in VIDEO_SUFFIXES and not p.name.startswith("."))
      if videos:
        episodes[directory.name] = videos
  if not episodes:
    raise ValueError(
        f"nwt_clips/folder: no video files in {manual_dir}. Expected "
        f"<manual_dir>/<episode_name>/<video>{'|'.join(VIDEO_SUFFIXES)}; nothing was written.")
  return episodes


def relative_name(episode: str, path: epath.Path) -> str:
  return f"{episode}/{path.name}"


def validation_files(names: list[str], fraction: float) -> set[str]:
  """Names whose path hash falls below `fraction`: at least one, never all (given >= 2)."""
  position = {n: int(hashlib.md5(n.encode()).hexdigest()[:8], 16) / 2**32 for n in names}
  ranked = sorted(names, key=position.get)
  count = sum(p < fraction for p in position.values())
  return set(ranked[:min(max(count, 1), len(names) - 1)])


def header_problem(path: epath.Path, min_seconds: float) -> tuple[str, str] | None:
  """(reason, detail) when a file's header already rules it out, else None."""
  try:
    with video_io.local_copy(path) as local:  # gs:// (Dataflow): ffmpeg reads a local copy
      info = video_io.probe(local)
  except video_io.VideoIOError as e:
    return "decode_error", str(e)
  if not info.has_video:
    return "no_video", "no video stream"
  if not info.has_audio:
    return "no_audio", "no audio stream"
  if 0 < info.duration < min_seconds:  # 0: the container does not say; decoding will tell
    return "too_short", f"{info.duration:.2f} s is shorter than one clip ({min_seconds:.2f} s)"
  return None


def file_examples(file: tuple[int, str, epath.Path], *, cfg: NwtClipsConfig,
                  count: Callable[..., None]) -> Iterator[tuple[int, dict]]:
  """All whole clips of one video file, or none (a skip, logged once and counted).

  `file` is (number, episode, path); clip c's key is number·2^24 + c, so examples are stored by
  file, then in time order (Beam's order-preserving writer needs integer keys).
  """
  number, episode, path = file
  name = relative_name(episode, path)
  clip_samples = cfg.num_frames * SAMPLES_PER_FRAME
  num_clips = 0
  try:
    with video_io.local_copy(path) as local:  # gs:// (Dataflow): ffmpeg reads a local copy
      audio = video_io.read_audio(local, sample_rate=SAMPLE_RATE)
      audio = np.round(np.clip(audio, -1.0, 1.0) * 32767).astype(np.int16)
      for frames in video_io.iter_video(local, fps=FPS, height=cfg.height, width=cfg.width,
                                        chunk_frames=cfg.num_frames):
        samples = audio[num_clips * clip_samples:(num_clips + 1) * clip_samples]
        if len(frames) < cfg.num_frames or len(samples) < clip_samples:
          break  # a partial clip at the end (or the audio ends first)
        clip_id = f"{name}#{num_clips:05d}"
        yield number * 2**24 + num_clips, {"video": frames, "audio": samples,
                                           "episode": episode, "clip_id": clip_id,
                                           "source": name}
        num_clips += 1
  except video_io.VideoIOError as e:
    if not num_clips:
      return _skip(name, "decode_error", str(e), count=count)
    # Clips already handed on cannot be taken back: keep them, and say so.
    logging.warning("nwt_clips: %s: kept %d clips before a decoding error: %s", name,
                    num_clips, e)
    count("partial_decode")
  if not num_clips:
    return _skip(name, "too_short", f"no whole clip of {cfg.num_frames} frames at {FPS} fps",
                 count=count)
  count("files_used")


def _skip(name: str, reason: str, detail: str, *, count: Callable[..., None]) -> None:
  """The one log line and the count of a skipped file."""
  logging.warning("nwt_clips: skipping %s (%s): %s", name, reason, detail)
  count(reason)
