"""The Memcodes explorer: what each code draws, which codes follow the audio, the episode and the
style, and what changes when one is swapped (the report's explorer section; docs/report.md).

Codes are a trained dVAE's eval-mode (argmax) indices of held-out clips, int [N, T, gh, gw, K]
(N clips of T frames, a gh x gw grid, K heads). Everything here is numpy over those indices and
the clips' audio, except `encode`, `decode` and `swap`, which run the dVAE:

    codes = explore.encode(dvae, params, videos)                 # [N, T, gh, gw, K]
    audio = explore.audio_following(codes, loudness, num_codes)  # scores, cells, top codes
    edit = explore.swap(dvae, params, codes[0], episodes[0], head=h, old=a, new=b, cells=mask)

Scores (docs/report.md). The audio signal is each frame's loudness, centred on its clip's mean,
so that what differs between clips (episode, style, a voice's level) cannot pass for following
the audio. A cell follows the audio as much as its code explains that signal (`cell_eta2`: the
correlation ratio, adjusted for chance, best head); the audio cells score at least 0.4 x the best
cell. A code follows the audio by the within-clip r of its use among the audio cells with the
loudness. The episode and style scores are per (head, code) over the whole grid: the correlation
ratio (eta^2) of its per-frame use with the episode id, and its r with each style latent
dimension. Nothing here reads the synthetic world's truth; `mouth_cells` and `iou` are the check
against it.
"""

import functools

import jax
import numpy as np

from nwt_jax.data import constants
# The statistics live in data/ (training uses them too); explore.X stays the explorer's API.
from nwt_jax.data.code_stats import (  # pylint: disable=unused-import
    _columns_r, _indicator_stats, audio_following, cell_eta2, eta_squared, indicator_r, top_codes,
    usage_fraction)
from nwt_jax.data import synthetic
from nwt_jax.models import dvae as dvae_lib
from nwt_jax.runtime import compile_options

CHUNK = 32  # frames per dVAE call (one compilation for any clip length)


# ----------------------------------------------------------------------------------------------
# The dVAE


@functools.lru_cache(maxsize=8)
def _jitted(dvae: dvae_lib.DVAE):
  enc = jax.jit(lambda p, x: dvae.apply({"params": p}, x, method=dvae.encode),
                compiler_options=compile_options.dvae())
  dec = jax.jit(lambda p, i, e: dvae.apply({"params": p}, i, e, method=dvae.decode),
                compiler_options=compile_options.dvae())
  return enc, dec


def _chunked(fn, *arrays):
  """fn over the leading axis in CHUNK-row calls (the last padded), concatenated."""
  n = len(arrays[0])
  pad = -n % CHUNK
  padded = [np.concatenate([a, np.repeat(a[-1:], pad, axis=0)]) if pad else a for a in arrays]
  out = [np.asarray(fn(*(a[i:i + CHUNK] for a in padded))) for i in range(0, n + pad, CHUNK)]
  return np.concatenate(out)[:n]


def encode(dvae: dvae_lib.DVAE, params, videos: np.ndarray) -> np.ndarray:
  """uint8 frames [..., H, W, 3] -> eval-mode code indices int32 [..., gh, gw, K]."""
  videos = np.asarray(videos)
  flat = videos.reshape((-1,) + videos.shape[-3:])
  enc, _ = _jitted(dvae)
  codes = _chunked(lambda x: enc(params, x), flat)
  return codes.reshape(videos.shape[:-3] + codes.shape[1:])


def decode(dvae: dvae_lib.DVAE, params, codes: np.ndarray, episodes: np.ndarray, *,
           as_uint8: bool = True) -> np.ndarray:
  """codes [..., gh, gw, K] + episode ids [...] -> frames [..., H, W, 3] (uint8, or float32 in
  [-1, 1])."""
  codes = np.asarray(codes, np.int32)
  flat = codes.reshape((-1,) + codes.shape[-3:])
  episodes = np.broadcast_to(np.asarray(episodes, np.int32), codes.shape[:-3]).reshape(-1)
  _, dec = _jitted(dvae)
  frames = _chunked(lambda i, e: dec(params, i, e), flat, episodes)
  frames = frames.reshape(codes.shape[:-3] + frames.shape[1:])
  return np.asarray(dvae_lib.frames_to_uint8(frames)) if as_uint8 else frames


def receptive_radius(dvae: dvae_lib.DVAE) -> int:
  """A bound, in pixels, on how far the decoder's convolutions carry a change of one grid cell
  beyond the cell's own pixels: each 3x3 conv reaches one step of its level (a stem at the grid,
  two per ResBlock, one per upsample, measured at the level below it, and the output conv).
  GroupNorm's per-frame statistics reach every pixel, but only through a mean and a variance."""
  blocks = dvae.res_blocks if dvae.decoder_res_blocks is None else dvae.decoder_res_blocks
  levels = len(dvae.channels)
  radius = 2 ** (levels - 1)  # the stem, at the grid's scale
  for level in reversed(range(levels)):
    radius += 2 * blocks[level] * 2 ** level
    if level > 0:
      radius += 2 ** level  # the upsample's conv (at most one step of the coarser level)
  return radius + 1  # the output conv


def within_reach(cells: np.ndarray, factor: int, radius: int) -> np.ndarray:
  """bool [gh, gw] cells -> bool [gh * f, gw * f]: the pixels within `radius` (Chebyshev) of a
  cell's pixels."""
  pixels = np.kron(np.asarray(cells, np.uint8), np.ones((factor, factor), np.uint8)).astype(bool)
  out = pixels.copy()
  ys, xs = np.nonzero(pixels)
  if len(ys):
    h, w = pixels.shape
    for y0, y1, x0, x1 in zip(ys - radius, ys + radius + 1, xs - radius, xs + radius + 1):
      out[max(y0, 0):min(y1, h), max(x0, 0):min(x1, w)] = True
  return out


# ----------------------------------------------------------------------------------------------
# Use


def loudness(audio: np.ndarray, num_frames: int) -> np.ndarray:
  """The audio envelope per video frame: RMS of int16 or float audio [T * 800] over each frame's
  samples, normalised to [0, 1] by full scale."""
  audio = np.asarray(audio)
  scale = 32768.0 if audio.dtype == np.int16 else 1.0
  per = constants.SAMPLES_PER_FRAME
  x = audio[:num_frames * per].astype(np.float64).reshape(num_frames, per) / scale
  return np.sqrt(np.mean(x * x, axis=1))


def counts(codes: np.ndarray, num_codes: int) -> np.ndarray:
  """Per-head use of each code over every cell and frame: int [K, num_codes]."""
  flat = np.asarray(codes).reshape(-1, codes.shape[-1])
  return np.stack([np.bincount(flat[:, h], minlength=num_codes) for h in range(flat.shape[1])])


def ranked(use: np.ndarray) -> list[np.ndarray]:
  """Per head, the codes used at least once, most used first."""
  return [np.array([c for c in np.argsort(-u, kind="stable") if u[c] > 0]) for u in use]


def dominant(codes: np.ndarray, num_codes: int) -> tuple[np.ndarray, np.ndarray]:
  """Per cell and head, the most used code and its share of the frames: (int [gh, gw, K],
  float [gh, gw, K])."""
  flat = np.asarray(codes).reshape((-1,) + codes.shape[-3:])  # [F, gh, gw, K]
  onehot_counts = np.zeros(codes.shape[-3:] + (num_codes,), np.int64)
  gh, gw, k = codes.shape[-3:]
  ii, jj, hh = np.meshgrid(np.arange(gh), np.arange(gw), np.arange(k), indexing="ij")
  for frame in flat:
    np.add.at(onehot_counts, (ii, jj, hh, frame), 1)
  return onehot_counts.argmax(-1), onehot_counts.max(-1) / len(flat)


def mean_patches(codes: np.ndarray, frames: np.ndarray, head: int, which: np.ndarray, *,
                 factor: int, margin: int = 0, limit: int = 256) -> np.ndarray:
  """For each code of `which`, the mean of the decoded frames' patches (a cell's f x f pixels,
  plus `margin` on each side) where head `head` uses it (at most `limit` uses): uint8
  [len(which), f + 2m, f + 2m, 3]; black where a code is never used."""
  codes = np.asarray(codes).reshape((-1,) + codes.shape[-3:])
  frames = np.asarray(frames).reshape((-1,) + frames.shape[-3:])
  size = factor + 2 * margin
  padded = np.pad(frames, ((0, 0), (margin, margin), (margin, margin), (0, 0)), mode="edge")
  out = np.zeros((len(which), size, size, 3), np.uint8)
  for n, code in enumerate(which):
    f, i, j = np.nonzero(codes[..., head] == code)
    if not len(f):
      continue
    pick = np.linspace(0, len(f) - 1, min(limit, len(f))).astype(int)
    patches = [padded[a, b * factor:b * factor + size, c * factor:c * factor + size]
               for a, b, c in zip(f[pick], i[pick], j[pick])]
    out[n] = np.round(np.mean(patches, axis=0)).astype(np.uint8)
  return out


# ----------------------------------------------------------------------------------------------
# Scores


def episode_scores(codes: np.ndarray, episodes: np.ndarray, num_codes: int, *, k: int = 8
                   ) -> dict:
  """eta^2 of each (head, code)'s per-frame use (share of the grid) with the episode id
  [N, T]: 'eta2' [K, num_codes] and the k 'top' (head, code, eta2)."""
  eta = eta_squared(usage_fraction(codes, num_codes), episodes)
  return {"eta2": eta, "top": top_codes(eta, k)}


def style_scores(codes: np.ndarray, style: np.ndarray, num_codes: int, *, k: int = 8) -> dict:
  """|r| of each (head, code)'s per-frame use with each style dimension (style [N, D] per clip,
  or [N, T, D] per frame): 'r' [D, K, num_codes], and per dimension the k 'top' codes."""
  use = usage_fraction(codes, num_codes)
  style = np.asarray(style, np.float64)
  if style.ndim == 2:  # per clip -> per frame
    style = np.repeat(style[:, None], codes.shape[1], axis=1)
  style = style.reshape(-1, style.shape[-1])
  r = np.stack([_columns_r(use, style[:, d]) for d in range(style.shape[1])])
  return {"r": r, "top": [top_codes(rd, k) for rd in r]}


# ----------------------------------------------------------------------------------------------
# Swap


def swap(dvae: dvae_lib.DVAE, params, codes: np.ndarray, episodes: np.ndarray, *, head: int,
         old: int, new: int, cells: np.ndarray | None = None) -> dict:
  """Replaces code `old` of head `head` by `new` in `cells` (bool [gh, gw]; default all) of every
  frame of one clip's codes [T, gh, gw, K], and decodes both. Returns 'codes' (edited),
  'original' and 'edited' (float32 frames [T, H, W, 3] in [-1, 1]), 'changed' (bool [T, gh, gw]:
  the cells swapped) and 'change' (float [H, W]: mean over frames of the largest per-channel
  absolute change, in [0, 2])."""
  codes = np.asarray(codes)
  mask = np.ones(codes.shape[-3:-1], bool) if cells is None else np.asarray(cells, bool)
  changed = (codes[..., head] == old) & mask
  edited = codes.copy()
  edited[..., head] = np.where(changed, new, codes[..., head])
  original = decode(dvae, params, codes, episodes, as_uint8=False)
  after = decode(dvae, params, edited, episodes, as_uint8=False)
  change = np.abs(after - original).max(axis=-1).mean(axis=0)
  return {"codes": edited, "original": original, "edited": after, "changed": changed,
          "change": change}


# ----------------------------------------------------------------------------------------------
# The synthetic world's check


def mouth_cells(clips: list[dict], grid: tuple[int, int], *, share: float = 0.5) -> np.ndarray:
  """The truth's mouth cells: bool [gh, gw], the cells that some pixel of the mouth region
  (`synthetic.mouth_region`) covers in at least `share` of the clips' frames."""
  hits = []
  for clip in clips:
    region, _ = synthetic.mouth_region(clip["truth"], clip["episode"], *clip["video"].shape[1:3])
    t, h, w = region.shape
    cells = region.reshape(t, grid[0], h // grid[0], grid[1], w // grid[1]).any(axis=(2, 4))
    hits.append(cells)
  return np.concatenate(hits).mean(axis=0) >= share


def iou(a: np.ndarray, b: np.ndarray) -> float:
  """Intersection over union of two bool masks (0 if both are empty)."""
  a, b = np.asarray(a, bool), np.asarray(b, bool)
  union = (a | b).sum()
  return float((a & b).sum() / union) if union else 0.0
