"""Global batches of clips as numpy dicts, sharded by process, deterministic and resumable.

    it = create_iterator(config.data, 'train', seed=config.seed,
                         process_index=jax.process_index(), process_count=jax.process_count())
    batch = next(it)   # this process's rows of global batch k
    state = it.get_state(); ...; it.set_state(state)   # resumes at exactly the same next batch

Global batch k is a pure function of (seed, k, dataset): row r is example `order[k·B + r]` of the
stream of epoch permutations (a permutation per epoch, seeded by (seed, epoch)), and its window of
`frames_per_example` frames starts at an offset drawn from (seed, k, r). So any process count sees
the same global batches, and process p loads only its rows [p·B/P, (p+1)·B/P) — which needs
random access by index. The `tfds` source has it for both file formats a build may have: an
ArrayRecord build through `as_data_source`, a TFRecord build (TFDS's default) through an index
of its records' byte offsets, made when the iterator opens by reading each record's 12-byte
header (`TfRecordIndex`). Both give the very same batches, and resume by `set_state` alike; the
TFRecord index costs one pass of header reads per split (seek + 12 bytes per clip). It decodes
only the window's frames.

Sources, same batch format :
  tfds              a built `nwt_clips` dataset in `data_dir` (TFDS imported lazily, here only).
  synthetic_inline  clips of `nwt_jax.data.synthetic` rendered in memory and cached; imports nothing
                    beyond numpy (GPU machines have no TF, TFDS or librosa). Clip i of a split is
                    the same clip the TFDS `synthetic` config writes (`synthetic_clip_seed`).

Batch: video uint8 [B', T', H, W, 3]; mel float32 [B', 4T', 80], the window's rows of the whole
clip's log-mel (rows [4t, 4t+4) belong to frame t); episode int32 [B']; truth float32 [B', T', 7]
when the source has it; mask bool [B'] only for one-pass iterators with drop_remainder=False
(padding rows are False). B' = batch_size / process_count.
"""

import concurrent.futures
import functools
import os
import queue
import threading
from collections.abc import Callable

import ml_collections
import numpy as np

from nwt_jax.data import audio as audio_lib
from nwt_jax.data import constants
from nwt_jax import errors
from nwt_jax.data import synthetic

SPLITS = ("train", "validation")


def batching_config(source: str, num_workers: int) -> ml_collections.ConfigDict:
  """The options every data source shares (how examples are batched), with their defaults."""
  c = ml_collections.ConfigDict()
  c.source = source  # where the examples come from
  c.batch_size = 16  # GLOBAL batch size (all processes together)
  c.frames_per_example = 0  # T': a window of T' consecutive frames per clip; 0 = whole clip
  c.shuffle = True  # train split: a new order every epoch, seeded by (seed, epoch)
  c.repeat = True  # train split: endless; the validation split is always one ordered pass
  c.drop_remainder = True  # one-pass iterators: drop the last partial batch (else pad + 'mask')
  c.prefetch = 2  # batches prepared ahead by a background thread
  c.num_workers = num_workers  # threads preparing a batch's rows (decoders release the GIL)
  return c


def default_config() -> ml_collections.ConfigDict:
  """Every data option with its default; a config's `data` overrides any subset of these."""
  # source: 'tfds' (a built nwt_clips dataset) | 'synthetic_inline'
  c = batching_config("synthetic_inline", num_workers=4)
  # source='tfds'
  c.data_dir = ""  # TFDS data_dir holding the build ('' = TFDS's default)
  c.tfds_name = "nwt_clips/synthetic"  # '<dataset>/<config>[:version]' as built by `tfds build`
  # source='synthetic_inline' (the same fields as the TFDS `synthetic` config)
  c.num_frames = 32  # T, frames per clip
  c.height = 64  # frame height
  c.width = 56  # frame width
  c.num_episodes = synthetic.NUM_EPISODES  # episodes clips are drawn from
  c.synthetic_seed = 0  # base seed of the clips (not of the order; that is `seed`)
  c.num_train_clips = 1024  # clips in the train split (rendered once, then cached)
  c.num_validation_clips = 128  # clips in the validation split
  return c


def synthetic_clip_seed(split: str, index: int, base_seed: int = 0) -> int:
  """Seed of synthetic clip `index` of `split`: disjoint between splits and base seeds."""
  if split not in SPLITS:
    raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
  if not 0 <= index < 2**32:
    raise ValueError(f"clip index out of range: {index}")
  return (base_seed * len(SPLITS) + SPLITS.index(split)) * 2**32 + index


# ----------------------------------------------------------------------------------------------
# Sources: len() and load(indices) -> list of clip dicts (video, audio int16, episode[, truth]).


class SyntheticSource:
  """Clips of the synthetic world, rendered on first use and cached (shared across iterators)."""

  def __init__(self, cfg: ml_collections.ConfigDict, split: str):
    self._split = split
    self._num = cfg.num_train_clips if split == "train" else cfg.num_validation_clips
    self._args = (cfg.num_frames, cfg.height, cfg.width, cfg.num_episodes, cfg.synthetic_seed)

  def __len__(self) -> int:
    return self._num

  def load(self, indices: list[int], pool: concurrent.futures.Executor) -> list[dict]:
    return list(pool.map(lambda i: _synthetic_clip(self._split, i, *self._args), indices))


@functools.lru_cache(maxsize=8192)
def _synthetic_clip(split, index, num_frames, height, width, num_episodes, base_seed) -> dict:
  clip = synthetic.make_clip(synthetic_clip_seed(split, index, base_seed), num_frames=num_frames,
                             height=height, width=width, num_episodes=num_episodes)
  clip["mel"] = audio_lib.log_mel(clip["audio"])
  for value in clip.values():
    if isinstance(value, np.ndarray):
      value.flags.writeable = False  # cached: shared by every batch that uses it
  return clip


class TfRecordIndex:
  """Random access to the records of TFRecord files, in order: record i is the i-th record of
  their concatenation (a TFDS split's shards, each cut to its file instruction's [skip, take)).

  A TFRecord record is: uint64 length, uint32 CRC of the length, `length` bytes, uint32 CRC of
  the data. The index holds each record's (file, data offset, length), found by reading only the
  headers; reads are positional (`os.pread`, thread-safe) for local files, seek + read under a
  lock otherwise (gs://). CRCs are not checked (TFDS's own reader does not either by default).
  """

  def __init__(self, instructions: list[tuple[str, int, int]]):
    """instructions: (path, skip, take) per file; take -1 = to the end."""
    self._files, self._locks, self._entries = [], [], []
    for number, (path, skip, take) in enumerate(instructions):
      local = not is_remote(path)
      handle = os.open(path, os.O_RDONLY) if local else _open_remote(path)
      self._files.append((local, handle))
      self._locks.append(threading.Lock())
      entries = self._scan(number, skip, take)
      self._entries.extend(entries)

  def _scan(self, number: int, skip: int, take: int) -> list[tuple[int, int, int]]:
    entries, offset, size = [], 0, self._size(number)
    while offset < size and (take < 0 or len(entries) < skip + take):
      header = self._read(number, offset, 12)
      if len(header) < 12:
        raise errors.InvalidInput(f"truncated TFRecord file (record {len(entries)})")
      length = int.from_bytes(header[:8], "little")
      entries.append((number, offset + 12, length))
      offset += 12 + length + 4
    return entries[skip:]

  def _size(self, number: int) -> int:
    local, handle = self._files[number]
    if local:
      return os.fstat(handle).st_size
    with self._locks[number]:
      return handle.size()

  def _read(self, number: int, offset: int, length: int) -> bytes:
    local, handle = self._files[number]
    if local:
      return os.pread(handle, length, offset)
    with self._locks[number]:
      handle.seek(offset)
      return handle.read(length)

  def __len__(self) -> int:
    return len(self._entries)

  def __getitem__(self, index: int) -> bytes:
    number, offset, length = self._entries[index]
    return self._read(number, offset, length)

  def close(self) -> None:
    for local, handle in self._files:
      if local:
        os.close(handle)
      else:
        handle.close()
    self._files = []


def is_remote(path: str) -> bool:
  return "://" in str(path)


def _open_remote(path: str):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top  (tfds source only: gs:// etc.)
  return tf.io.gfile.GFile(path, "rb")


class TfdsSource:
  """A split of a built nwt_clips dataset, read by index from its ArrayRecord or TFRecord
  files."""

  def __init__(self, cfg: ml_collections.ConfigDict, split: str):
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top  (tfds source only)
    where = f"{cfg.tfds_name} in {cfg.data_dir or 'the default TFDS data_dir'}"
    try:  # from the files alone: their features, whichever config (or JSON config) built them
      builder = tfds.core.read_only_builder.builder_from_files(
          cfg.tfds_name, data_dir=cfg.data_dir or None)
    except tfds.core.registered.DatasetNotFoundError as e:
      raise errors.MissingInput(
          f"No built dataset {where}: build it first, e.g. `tfds build tfds_builders/nwt_clips "
          f"--config=synthetic --data_dir={cfg.data_dir or '<data_dir>'}`") from e
    file_format = builder.info.file_format
    if file_format == tfds.core.FileFormat.ARRAY_RECORD:
      self._records = builder.as_data_source(
          split=split, deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES)
    elif file_format == tfds.core.FileFormat.TFRECORD:
      self._records = TfRecordIndex([(os.fspath(f.filename), f.skip, f.take)
                                     for f in builder.info.splits[split].file_instructions])
    else:
      raise errors.InvalidInput(
          f"{where} is stored as {file_format.value if file_format else 'unknown'}; the input "
          f"pipeline reads tfrecord (TFDS's default) and array_record builds: rebuild it with "
          f"`tfds build ... --file_format=tfrecord`.")
    self._features = builder.info.features
    self._decoders = {"video": _keep_encoded_decoder()}

  def __len__(self) -> int:
    return len(self._records)

  def close(self) -> None:
    if isinstance(self._records, TfRecordIndex):
      self._records.close()

  def load(self, indices: list[int], pool: concurrent.futures.Executor) -> list[dict]:
    if isinstance(self._records, TfRecordIndex):
      return list(pool.map(lambda i: self._decode(self._records[i]), indices))
    records = self._records.__getitems__(indices)  # array_record reads them in parallel
    return list(pool.map(self._decode, records))

  def _decode(self, record: bytes) -> dict:
    example = self._features.deserialize_example_np(record, decoders=self._decoders)
    example["video"] = EncodedFrames(example["video"], self._features["video"].feature)
    return example  # no "mel": the window's rows are computed from its audio alone


def _keep_encoded_decoder():
  """A tfds decoder that leaves a feature's bytes as stored (tfds.decode.SkipDecoding has no
  numpy path in tfds 4.9)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  class KeepEncoded(tfds.decode.Decoder):

    def decode_example(self, serialized):
      return serialized

    decode_example_np = decode_batch_example_np = decode_example

  return KeepEncoded()


class EncodedFrames:
  """A clip's encoded frames, decoded only when sliced: a window needs only a few of them."""

  def __init__(self, frames, image_feature):
    self._frames = frames
    self._image = image_feature

  def __len__(self) -> int:
    return len(self._frames)

  def __getitem__(self, index: slice) -> np.ndarray:
    return np.stack([self._image.decode_example_np(f) for f in self._frames[index]])


SOURCES: dict[str, Callable[[ml_collections.ConfigDict, str], object]] = {
    "synthetic_inline": SyntheticSource,
    "tfds": TfdsSource,
}


def mel_rows(audio: np.ndarray, start: int, stop: int) -> np.ndarray:
  """Rows [start, stop) of `audio_lib.log_mel(audio)`, from only the audio those rows see.

  A row looks N_FFT/2 samples either side of its centre, so the rows' audio plus 3 hops of context
  gives the same rows (to float rounding, ~5e-7) at a fraction of the cost for a short window.
  """
  context = -(-(audio_lib.N_FFT // 2) // audio_lib.HOP_LENGTH)  # 3 hops
  first = max(0, start - context)
  begin = first * audio_lib.HOP_LENGTH
  end = min(len(audio), (stop + context) * audio_lib.HOP_LENGTH)
  return audio_lib.log_mel(audio[begin:end])[start - first:stop - first]


# ----------------------------------------------------------------------------------------------
# The sampler: which example and which window each row of global batch k gets.


@functools.lru_cache(maxsize=4)
def _epoch_order(seed: int, epoch: int, num_examples: int, shuffle: bool) -> np.ndarray:
  if not shuffle:
    return np.arange(num_examples)
  return np.random.default_rng([seed, epoch, 0x5EED]).permutation(num_examples)


def _window_start(seed: int, step: int, row: int, max_start: int) -> int:
  if max_start == 0:
    return 0
  return int(np.random.default_rng([seed, step, row, 0x3140]).integers(0, max_start + 1))


class DataIterator:
  """Iterator over this process's rows of global batches; see the module docstring."""

  def __init__(self, source, *, batch_size: int, frames_per_example: int, shuffle: bool,
               repeat: bool, drop_remainder: bool, seed: int, process_index: int,
               process_count: int, prefetch: int = 2, num_workers: int = 4):
    if batch_size <= 0 or batch_size % process_count:
      raise errors.InvalidInput(f"global batch_size {batch_size} must be a positive multiple of "
                       f"process_count {process_count}")
    if not 0 <= process_index < process_count:
      raise ValueError(f"process_index {process_index} not in [0, {process_count})")
    if len(source) == 0:
      raise errors.InvalidInput("the data source holds no examples")
    if not repeat and drop_remainder and len(source) < batch_size:
      raise errors.InvalidInput(f"{len(source)} examples make no full batch of {batch_size} "
                       f"(set drop_remainder=False to pad)")
    self._source = source
    self._batch_size = batch_size
    self._frames = frames_per_example
    self._shuffle, self._repeat, self._drop = shuffle, repeat, drop_remainder
    self._seed = seed
    per_process = batch_size // process_count
    self._rows = range(process_index * per_process, (process_index + 1) * per_process)
    self._prefetch = max(1, prefetch)
    self._pool = concurrent.futures.ThreadPoolExecutor(max(1, num_workers))
    self._step = 0  # the global batch next() returns next
    self._thread = None
    self._queue = None
    self._stop = None

  # -- the pure part -------------------------------------------------------------------------

  @property
  def num_batches(self) -> int | None:
    """Batches in one pass (None when repeating forever)."""
    if self._repeat:
      return None
    n = len(self._source)
    return n // self._batch_size if self._drop else -(-n // self._batch_size)

  def batch(self, step: int) -> dict:
    """This process's rows of global batch `step` (a pure function of seed, step and data)."""
    n = len(self._source)
    positions = [step * self._batch_size + r for r in self._rows]
    indices = [int(_epoch_order(self._seed, p // n, n, self._shuffle)[p % n]) for p in positions]
    clips = self._source.load(indices, self._pool)
    rows = list(self._pool.map(self._window, clips, [step] * len(clips), self._rows))
    batch = {key: np.stack([row[key] for row in rows]) for key in rows[0]}
    if not self._repeat and not self._drop:
      batch["mask"] = np.array([p < n for p in positions])
    return batch

  def _window(self, clip: dict, step: int, row: int) -> dict:
    num_frames = len(clip["video"])
    frames = self._frames or num_frames
    if frames > num_frames:
      raise ValueError(f"frames_per_example {frames} exceeds the clips' {num_frames} frames")
    t0 = _window_start(self._seed, step, row, num_frames - frames)
    time = slice(t0, t0 + frames)
    rows = (t0 * constants.MEL_PER_FRAME, (t0 + frames) * constants.MEL_PER_FRAME)
    mel = clip["mel"][slice(*rows)] if "mel" in clip else mel_rows(clip["audio"], *rows)
    out = {"video": clip["video"][time], "mel": mel.astype(np.float32),
           "episode": np.int32(clip["episode"])}
    if "truth" in clip:
      out["truth"] = clip["truth"][time].astype(np.float32)
    return out

  # -- iteration with a background producer --------------------------------------------------

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    if self.num_batches is not None and self._step >= self.num_batches:
      raise StopIteration
    if self._thread is None:
      self._start()
    step, batch = self._queue.get()
    if isinstance(batch, BaseException):
      self._halt()
      raise batch
    assert step == self._step, (step, self._step)
    self._step += 1
    return batch

  def get_state(self) -> dict:
    """The position: a small JSON-able dict."""
    return {"step": self._step}

  def set_state(self, state: dict) -> None:
    """Resumes so that next() returns global batch `state['step']`."""
    step = state["step"]
    if not isinstance(step, int) or step < 0:
      raise ValueError(f"invalid iterator state {state!r}")
    self._halt()
    self._step = step

  def close(self) -> None:
    self._halt()
    self._pool.shutdown(wait=False, cancel_futures=True)
    if hasattr(self._source, "close"):
      self._source.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()

  def _start(self) -> None:
    self._queue = queue.Queue(maxsize=self._prefetch)
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._produce, args=(self._step, self._queue,
                                                                self._stop), daemon=True)
    self._thread.start()

  def _halt(self) -> None:
    if self._thread is None:
      return
    self._stop.set()
    while self._thread.is_alive():  # unblock a producer waiting on a full queue
      try:
        self._queue.get(timeout=0.05)
      except queue.Empty:
        pass
    self._thread = self._queue = self._stop = None

  def _produce(self, step: int, out: queue.Queue, stop: threading.Event) -> None:
    end = self.num_batches
    while not stop.is_set() and (end is None or step < end):
      try:
        item = (step, self.batch(step))
      except Exception as e:  # pylint: disable=broad-except  (re-raised by next())
        item = (step, e)
      while not stop.is_set():
        try:
          out.put(item, timeout=0.1)
          break
        except queue.Full:
          pass
      if isinstance(item[1], Exception):
        return
      step += 1


def create_iterator(data_config: ml_collections.ConfigDict, split: str, *, seed: int,
                    process_index: int = 0, process_count: int = 1) -> DataIterator:
  """The iterator over `split` ('train' or 'validation')."""
  cfg = default_config()
  unknown = set(data_config.keys()) - set(cfg.keys())
  if unknown:
    raise errors.InvalidInput(f"unknown data config fields {sorted(unknown)}; known: {sorted(cfg.keys())}")
  cfg.update(data_config)
  if cfg.source not in SOURCES:
    raise errors.InvalidInput(f"data.source must be one of {sorted(SOURCES)}, got {cfg.source!r}")
  if split not in SPLITS:
    raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
  train = split == "train"
  return DataIterator(
      SOURCES[cfg.source](cfg, split), batch_size=cfg.batch_size,
      frames_per_example=cfg.frames_per_example, shuffle=cfg.shuffle and train,
      repeat=cfg.repeat and train, drop_remainder=cfg.drop_remainder, seed=seed,
      process_index=process_index, process_count=process_count, prefetch=cfg.prefetch,
      num_workers=cfg.num_workers)
