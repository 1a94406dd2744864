"""The prior's previews for TensorBoard: a few held-out windows' frames as the dVAE draws them from
the true codes (top row) and from the prior's teacher-forced argmax codes (bottom row): each frame
predicted from the true frames before it, its audio, episode and style (the posterior mean).

    previewer = previews.Previewer(config.dvae_workdir, model)
    writer.write_images(step, {"eval/previews": previewer(state.params, batch)})

The dVAE is loaded on the first call (the prior's training does not otherwise need it).
"""

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from nwt_jax.models import dvae as dvae_lib
from nwt_jax.models import prior as prior_lib
from nwt_jax.training import dvae as train_dvae
from nwt_jax.training import dvae_eval


def teacher_forced_codes(model: prior_lib.Prior, params: Any, batch: dict) -> jax.Array:
  """The prior's argmax codes [B, T, gh, gw, K] of a batch {codes, mel, episode}, each frame
  given the true frames before it (eval mode: z is the posterior mean)."""
  logits, _ = model.apply({"params": params}, batch["codes"], batch["mel"], batch["episode"],
                          train=False)
  return jnp.argmax(logits, axis=-1).astype(jnp.int32)


class Previewer:
  """`previewer(params, batch) -> uint8 image`: true and teacher-forced frames of the first
  `clips` windows of a batch, every `stride`-th frame."""

  def __init__(self, dvae_workdir: str, model: prior_lib.Prior, *, clips: int = 2,
               frames: int = 4, stride: int = 2):
    self._dvae_workdir, self._model = dvae_workdir, model
    self.clips, self.frames, self.stride = clips, frames, stride
    self._dvae = None
    self._predict = jax.jit(functools.partial(teacher_forced_codes, model))

  def __call__(self, params: Any, batch: dict) -> np.ndarray:
    if self._dvae is None:
      self._dvae = train_dvae.load_frozen(self._dvae_workdir)[:2]
      dvae, dvae_params = self._dvae
      self._render = jax.jit(lambda codes, episode: dvae_lib.frames_to_uint8(dvae.apply(
          {"params": dvae_params}, codes, episode, method=dvae.decode)))
    batch = {k: np.asarray(batch[k])[:self.clips] for k in ("codes", "mel", "episode")}
    predicted = np.asarray(self._predict(params, batch))
    pick = lambda codes: codes[:, ::self.stride][:, :self.frames]  # [b, n, gh, gw, K]
    episode = np.broadcast_to(batch["episode"].reshape(len(batch["codes"]), -1),
                              batch["codes"].shape[:2])
    episode = pick(episode[..., None, None, None])[..., 0, 0, 0]  # [b, n]
    rows = []
    for codes in (pick(batch["codes"]), pick(predicted)):
      flat = codes.reshape((-1,) + codes.shape[2:])
      rows.append(np.asarray(self._render(jnp.asarray(flat), jnp.asarray(episode.reshape(-1)))))
    return dvae_eval.sample_grid(rows[0], rows[1])
