"""Opening frames: real frames' codes from which a FAR prior's first frame is retrieved.

A FAR prior draws a frame's codes independently of each other. From the BOS frame (the first
frame of a video, or the first after an episode switch) that is a blur of every face the audio,
episode and style allow, and every later frame copies it: a mouth that starts as a smudge mostly
stays one (measured on `tiny`, docs/experiments.md). So the first frame is instead the frame of a bank
of training frames that the prior itself finds most likely there (its guided log-likelihood as
frame 0 of the window, given the audio, episode and style), and the prior continues from it.

`nwt_jax.training.prior` writes the bank into the prior's workdir when training starts:

    bank = build(token_pipeline.TokenSource(tokens_dir, 'train'))  # int16 [N, gh, gw, K]
    save(workdir, bank); bank = load(workdir)  # None for a workdir without one

and `nwt_jax.inference.generator.Generator` uses it (`opening='bank'`) when the workdir has one.
"""

import io
import math

from etils import epath
import numpy as np

FILENAME = "frame_bank.npy"
MAX_FRAMES = 4096  # frames kept: ~3.6 MB of int16 codes for the tiny preset's 896 codes a frame


def build(source, max_frames: int = MAX_FRAMES) -> np.ndarray:
  """Every k-th frame of the source's clips in order (k: so that at most `max_frames` are kept).

  source: a `token_pipeline.TokenSource` (len() clips, clip(i)['codes'] [T, gh, gw, K]).
  Returns int16 codes [N, gh, gw, K], N <= max_frames.
  """
  if max_frames < 1:
    raise ValueError(f"max_frames must be >= 1, got {max_frames}")
  if not len(source):
    raise ValueError("the token source has no clips to take opening frames from")
  frames_per_clip = len(source.clip(0)["codes"])
  stride = max(1, math.ceil(len(source) * frames_per_clip / max_frames))
  frames, offset = [], 0
  for i in range(len(source)):
    codes = source.clip(i)["codes"]
    frames.append(np.asarray(codes[(-offset) % stride::stride]))
    offset = (offset + len(codes)) % stride  # the stride runs on across clips
  return np.concatenate(frames)[:max_frames].astype(np.int16)


def save(workdir: str, bank: np.ndarray) -> None:
  """Writes the bank into `workdir` atomically (a temporary file, then a rename)."""
  path = epath.Path(workdir) / FILENAME
  tmp = path.parent / f"{FILENAME}.tmp"
  buffer = io.BytesIO()
  np.save(buffer, bank)
  tmp.write_bytes(buffer.getvalue())
  tmp.replace(path)


def load(workdir: str) -> np.ndarray | None:
  """The bank of a prior workdir as int32 codes [N, gh, gw, K], or None if it has none."""
  path = epath.Path(workdir) / FILENAME
  if not path.exists():
    return None
  return np.load(io.BytesIO(path.read_bytes())).astype(np.int32)
