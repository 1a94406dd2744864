"""The user's controls: the episode (one, or a schedule that switches mid-video; by id or by the
name in the workdirs' `episodes.json`, `nwt_jax.data.episodes`) and the style
latent (random, copied from a reference clip, given, or traversed along one dimension)."""

import numpy as np
import jax.numpy as jnp

from nwt_jax import errors
from nwt_jax.data import constants
from nwt_jax.data import episodes as episodes_lib
from nwt_jax.data import video_io
from nwt_jax.inference.generator import Models

TRAVERSE_STEPS = (-2.0, -1.0, 0.0, 1.0, 2.0)  # multiples of the prior's sigma (1) along one dim


def schedule_items(spec: str, num_episodes: int, names: list[str] | None = None
                   ) -> list[tuple[float, int]]:
  """'0:3,4.5:5' or 'alice:0,bob:12.5' -> [(seconds, episode id), ...] as given.

  An item is SECONDS:EPISODE, or with named episodes (`names`, id order) NAME:SECONDS as well;
  a side that is one of `names` is the episode, whichever side it is on; two numbers are
  SECONDS:EPISODE, as before names existed."""
  items = []
  for item in filter(None, (s.strip() for s in spec.split(","))):
    parts = [p.strip() for p in item.split(":")]
    try:
      if len(parts) != 2:
        raise ValueError
      first, second = parts
      if names and first in names and second not in names:
        items.append((float(second), names.index(first)))
      elif names and second in names:
        items.append((float(first), names.index(second)))
      else:
        items.append((float(first), int(second)))
    except ValueError:
      named = (f", or NAME:SECONDS with a name of {episodes_lib.describe(names, num_episodes)}"
               if names else "")
      raise errors.GenerateError(f"--episode_schedule item {item!r} is not SECONDS:EPISODE "
                                 f"(e.g. 0:3,4.5:5){named}") from None
  return items


def parse_schedule(spec: str, num_frames: int, num_episodes: int,
                   names: list[str] | None = None) -> np.ndarray:
  """'0:3,4.5:5' (seconds:episode, from 0, increasing; with `names` also 'alice:0,bob:4.5')
  -> int32 episode id per frame [T]."""
  items = schedule_items(spec, num_episodes, names)
  if not items:
    raise errors.GenerateError(f"--episode_schedule {spec!r} is empty (e.g. 0:3,4.5:5)")
  times = [t for t, _ in items]
  episodes = [e for _, e in items]
  if times[0] != 0 or any(b <= a for a, b in zip(times, times[1:])):
    raise errors.GenerateError(f"--episode_schedule {spec!r}: times must start at 0 and increase")
  for episode in episodes:
    check_episode(episode, num_episodes, names)
  starts = np.round(np.array(times) * constants.FPS).astype(np.int64)
  return np.asarray(episodes, np.int32)[np.searchsorted(starts, np.arange(num_frames),
                                                        side="right") - 1]


def numeric_schedule(spec: str, num_episodes: int, names: list[str] | None = None) -> str:
  """`spec` with names replaced by ids, as SECONDS:EPISODE items ('alice:0,bob:12.5' ->
  '0:0,12.5:1'); checked like `parse_schedule` checks it."""
  if not spec:
    return spec
  parse_schedule(spec, 1, num_episodes, names)  # every refusal, before anything runs
  return ",".join(f"{t!r}:{e}" for t, e in schedule_items(spec, num_episodes, names))


def check_episode(episode: int, num_episodes: int, names: list[str] | None = None) -> None:
  if not 0 <= episode < num_episodes:
    known = episodes_lib.describe(names, num_episodes) if names else f"0..{num_episodes - 1}"
    raise errors.GenerateError(f"episode {episode} is out of range: the models know episodes "
                               f"{known}")


def resolve_episode(spec, num_episodes: int, names: list[str] | None = None) -> int:
  """--episode's value ('3' or a name of `names`) -> its id."""
  return episodes_lib.resolve(spec, names, num_episodes)


def parse_z(spec: str, style_dim: int) -> np.ndarray:
  """'0.1,-2,...' -> float32 [style_dim]."""
  try:
    z = np.array([float(v) for v in spec.split(",")], np.float32)
  except ValueError:
    raise errors.GenerateError(
        f"--style=z:{spec} is not a comma-separated list of numbers") from None
  if z.shape != (style_dim,) or not np.all(np.isfinite(z)):
    raise errors.GenerateError(f"--style=z: needs {style_dim} finite numbers (the prior's "
                               f"style_dim), got {len(z)}")
  return z


def style_latent(models: Models, spec: str, seed: int, *, reference_frames=None) -> np.ndarray:
  """The style z [style_dim] for --style: 'random' (N(0, I) from the seed), 'z:...' or
  'reference:PATH' (the posterior mean of the clip's first window; pass its frames in
  `reference_frames` or let it be read from PATH)."""
  style_dim = models.prior.style_dim
  if spec == "random":
    return np.random.default_rng([seed, 0x57]).standard_normal(style_dim).astype(np.float32)
  kind, _, value = spec.partition(":")
  if kind == "z" and value:
    return parse_z(value, style_dim)
  if kind == "reference" and value:
    if reference_frames is None:
      try:
        with video_io.local_copy(value) as local:  # gs:// too
          reference_frames = video_io.read_video(local, height=models.frame_size[0],
                                                 width=models.frame_size[1])
      except (video_io.VideoIOError, OSError) as e:
        raise errors.GenerateError(f"--style=reference: {e}") from None
    return reference_style(models, reference_frames)
  raise errors.GenerateError(f"--style={spec!r}: use random, reference:CLIP.mp4 or z:V1,V2,...")


def reference_style(models: Models, frames: np.ndarray) -> np.ndarray:
  """Posterior mean z [style_dim] of a reference clip's first window (uint8 [T, H, W, 3])."""
  frames = np.asarray(frames)[:models.window_frames]
  if frames.ndim != 4 or not len(frames):
    raise errors.GenerateError("the reference clip has no frames")
  codes = models.dvae.apply({"params": models.dvae_params}, jnp.asarray(frames)[None],
                            method=models.dvae.encode)
  mu, _ = models.prior.apply({"params": models.prior_params}, codes,
                             method=models.prior.encode_style)
  return np.asarray(mu[0], np.float32)


def traversal_latents(z: np.ndarray, dim: int) -> np.ndarray:
  """z with dimension `dim` moved by each of TRAVERSE_STEPS prior sigmas -> [5, style_dim]."""
  if not 0 <= dim < z.shape[0]:
    raise errors.GenerateError(f"--traverse_dim={dim} is out of range: style_dim is {z.shape[0]}")
  zs = np.repeat(z[None], len(TRAVERSE_STEPS), axis=0)
  zs[:, dim] += np.asarray(TRAVERSE_STEPS, np.float32)
  return zs
