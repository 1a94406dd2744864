"""Which codes follow a signal: statistics of tokenized clips' codes (numpy only).

Shared by the Memcodes explorer (`evaluation/explore.py`) and by training, which hides the
audio-following cells from the prior's previous frame (`training/audio_cells.py`).
"""

import numpy as np


def _indicator_stats(codes: np.ndarray, num_codes: int):
  """Per head, for every (cell, code): the frames using it. Returns key [F, gh, gw, K] (the
  flattened (cell, code) id of each frame's code per head) and the key count per head."""
  flat = np.asarray(codes).reshape((-1,) + codes.shape[-3:]).astype(np.int64)  # [F, gh, gw, K]
  gh, gw = flat.shape[1:3]
  cell = (np.arange(gh)[:, None] * gw + np.arange(gw)[None, :])[None, :, :, None]
  return cell * num_codes + flat, gh * gw * num_codes


def indicator_r(codes: np.ndarray, signal: np.ndarray, num_codes: int, *,
                min_share: float = 0.0) -> np.ndarray:
  """The within-clip Pearson r of each (cell, head, code) use indicator with a per-frame signal:
  both centred on each clip's own mean, then pooled over clips, so what differs between clips
  (the episode, the style, a voice's loudness) cannot make a code look as if it followed the
  signal. codes [N, T, gh, gw, K], signal [N, T] -> float [gh, gw, K, num_codes]; 0 where the
  indicator's within-clip variance is under that of a code used in `min_share` of the frames (a
  code seen a few times correlates by chance), or the signal is constant."""
  codes = np.asarray(codes)
  num_clips, num_frames, gh, gw, k = codes.shape
  y = np.asarray(signal, np.float64)
  if y.shape != codes.shape[:2]:
    raise ValueError(f"the signal is {y.shape}, the codes {codes.shape[:2]}")
  y = y - y.mean(axis=1, keepdims=True)
  sy = np.sqrt(np.mean(y * y))
  keys, size = _indicator_stats(codes, num_codes)
  keys = keys.reshape(num_clips, num_frames, gh * gw, k)
  clip = (np.arange(num_clips) * size)[:, None, None]
  frames = num_clips * num_frames
  out = np.zeros((k, size))
  for h in range(k):
    flat = (keys[..., h] + clip).ravel()  # per clip, per (cell, code)
    p = np.bincount(flat, minlength=num_clips * size).reshape(num_clips, size) / num_frames
    s = np.bincount(flat, weights=np.repeat(y.ravel(), gh * gw),
                    minlength=num_clips * size).reshape(num_clips, size).sum(axis=0) / frames
    var = np.mean(p * (1 - p), axis=0)  # the indicator's within-clip variance
    with np.errstate(invalid="ignore", divide="ignore"):
      kept = (var >= max(min_share * (1 - min_share), 1e-12)) & (sy > 0)
      out[h] = np.where(kept, s / np.sqrt(var) / sy, 0.0)
  return out.reshape(k, gh, gw, num_codes).transpose(1, 2, 0, 3)


def cell_eta2(codes: np.ndarray, signal: np.ndarray, num_codes: int, *,
              min_share: float = 0.02) -> np.ndarray:
  """How much of a per-frame signal each cell's code explains, per head: the correlation ratio
  (eta^2) of the signal, centred on each clip's own mean (so what differs between clips cannot
  count), grouped by the cell's code; codes in fewer than `min_share` of the frames form one
  group, and the ratio is adjusted for the number of groups as R^2 is (chance alone scores
  about 0). codes [N, T, gh, gw, K], signal [N, T] -> float [gh, gw, K] in [0, 1]."""
  codes = np.asarray(codes)
  num_clips, num_frames, gh, gw, k = codes.shape
  y = np.asarray(signal, np.float64)
  if y.shape != codes.shape[:2]:
    raise ValueError(f"the signal is {y.shape}, the codes {codes.shape[:2]}")
  y = (y - y.mean(axis=1, keepdims=True)).ravel()
  total = (y * y).sum()
  frames = len(y)
  keys, size = _indicator_stats(codes, num_codes)  # [F, gh, gw, K]
  out = np.zeros((k, gh * gw))
  for h in range(k):
    flat = keys[..., h].reshape(frames, -1)
    n = np.bincount(flat.ravel(), minlength=size).reshape(gh * gw, num_codes)
    s = np.bincount(flat.ravel(), weights=np.repeat(y, gh * gw),
                    minlength=size).reshape(gh * gw, num_codes)
    rare = n < min_share * frames
    n_rare, s_rare = (n * rare).sum(axis=1), (s * rare).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
      between = (np.where(~rare & (n > 0), s * s / n, 0.0).sum(axis=1)
                 + np.where(n_rare > 0, s_rare ** 2 / n_rare, 0.0))
    groups = (~rare & (n > 0)).sum(axis=1) + (n_rare > 0)
    eta = between / total if total > 0 else np.zeros(gh * gw)
    # Within-clip centring spends one degree of freedom per clip.
    dof = max(frames - num_clips, 1)
    adjusted = 1 - (1 - eta) * (dof - 1) / np.maximum(dof - groups, 1)
    out[h] = np.clip(adjusted, 0.0, 1.0)
  return out.reshape(k, gh, gw).transpose(1, 2, 0)


def usage_fraction(codes: np.ndarray, num_codes: int, cells: np.ndarray | None = None
                   ) -> np.ndarray:
  """Per frame, the share of `cells` (bool [gh, gw]; default all) where each (head, code) is
  used: float [F, K, num_codes]."""
  flat = np.asarray(codes).reshape((-1,) + codes.shape[-3:])
  mask = np.ones(flat.shape[1:3], bool) if cells is None else np.asarray(cells, bool)
  picked = flat[:, mask]  # [F, cells, K]
  frames, cells_, heads = picked.shape
  out = np.zeros((frames, heads, num_codes))
  for h in range(heads):
    index = (np.arange(frames)[:, None] * num_codes + picked[..., h]).ravel()
    out[:, h] = np.bincount(index, minlength=frames * num_codes).reshape(frames, num_codes)
  return out / max(cells_, 1)


def _columns_r(x: np.ndarray, y: np.ndarray) -> np.ndarray:
  """Pearson r of every column of x [F, ...] with y [F]; 0 where a column is constant."""
  x = x - x.mean(axis=0)
  y = np.asarray(y, np.float64) - np.mean(y)
  denom = np.sqrt((x * x).sum(axis=0) * (y * y).sum())
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(denom > 0, np.tensordot(y, x, axes=1) / denom, 0.0)


def eta_squared(x: np.ndarray, groups: np.ndarray) -> np.ndarray:
  """The correlation ratio of every column of x [F, ...] with categorical groups [F]: the share
  of each column's variance that the group means explain (0 .. 1; 0 where constant)."""
  groups = np.asarray(groups).reshape(-1)
  total = ((x - x.mean(axis=0)) ** 2).sum(axis=0)
  between = np.zeros_like(total)
  for g in np.unique(groups):
    part = x[groups == g]
    between += len(part) * (part.mean(axis=0) - x.mean(axis=0)) ** 2
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(total > 0, between / total, 0.0)


def top_codes(score: np.ndarray, k: int = 8) -> list[tuple[int, int, float]]:
  """The k (head, code, score) with the largest |score| of a [K, num_codes] table."""
  flat = np.argsort(-np.abs(score), axis=None, kind="stable")[:k]
  return [(int(h), int(c), float(score[h, c]))
          for h, c in zip(*np.unravel_index(flat, score.shape))]


def audio_following(codes: np.ndarray, loud: np.ndarray, num_codes: int, *,
                    share: float = 0.4, min_share: float = 0.02, k: int = 8) -> dict:
  """Which cells and codes follow the audio (found without truth).

  codes [N, T, gh, gw, K], loud [N, T] (`loudness` per clip). Returns 'cell_score' [gh, gw]
  (`cell_eta2`: the most of the within-clip loudness any head's code there explains),
  'cells' bool [gh, gw] (score >= `share` x the best cell's), 'code_r' [K, num_codes] (the
  within-clip r of each code's use among those cells with the loudness) and 'top' (the k codes
  of largest |r|: (head, code, r)).
  """
  cell_score = cell_eta2(codes, loud, num_codes, min_share=min_share).max(axis=-1)
  cells = cell_score >= share * cell_score.max() if cell_score.max() > 0 else cell_score > 0
  use = usage_fraction(codes, num_codes, cells).reshape(codes.shape[:2] + (-1,))  # [N, T, KC]
  centred = lambda x: (x - x.mean(axis=1, keepdims=True)).reshape((-1,) + x.shape[2:])
  code_r = _columns_r(centred(use), centred(np.asarray(loud, np.float64)[..., None])[:, 0])
  code_r = code_r.reshape(codes.shape[-1], num_codes)
  return {"cell_score": cell_score, "cells": cells, "code_r": code_r,
          "top": top_codes(code_r, k)}
