"""Stage 1 trainer: the adversarial dVAE (Memcodes bottleneck) under jit with explicit shardings.

    python -m nwt_jax.train --config=configs/dvae.py:tiny --workdir=runs/dvae_tiny

The trainers' shape (`training.loop`): `create_train_state`, `train_step`, `eval_step`, a cached
`setup(config, devices)` and `train_and_evaluate(config, workdir)`; the held-out evaluation is in
`dvae_eval`, and `restore.dvae` loads a trained dVAE for tokenization and generation. Generator
(the DVAE) and discriminator live in one `loop.TrainState`, under `params['generator']`,
`params['discriminator']` and the same keys of `opt_state`, and one jitted step updates both:

- generator loss: L1 + s(step) * (adv_weight * hinge + fm_weight * feature matching), where
  s(step) is 0 before `loss.adv_start_step` and rises linearly to 1 over `loss.adv_ramp_steps`;
- discriminator: hinge loss on real frames vs the (stop-gradient) reconstructions, updated only
  from `adv_start_step` on. Before that a `lax.cond` skips the discriminator entirely, so the
  L1-only warm-up costs what an autoencoder step costs.

The step's randomness (Gumbel noise, rng stream 'gumbel') is `fold_in(key(seed), state.step)`,
so a resumed run repeats an uninterrupted one bit for bit. Eval (every `train.eval_every` steps)
reconstructs a fixed held-out set and reports PSNR, SSIM, per-head code usage and perplexity and
the mouth's recoverability, and writes `workdir/samples/recon_{step}.png` (originals above,
reconstructions below).
"""

import dataclasses
import functools
import json
from typing import Any

from absl import logging
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from nwt_jax.data import input_pipeline
from nwt_jax.models import discriminator
from nwt_jax.models import dvae
from nwt_jax.runtime import compile_options
from nwt_jax.training import checkpoint
from nwt_jax.training import dvae_eval
from nwt_jax.training import loop
from nwt_jax.training import losses
from nwt_jax.training import metric_writer
from nwt_jax.training import sharding

PyTree = Any


# ----------------------------------------------------------------------------------------------
# Models, optimisers, state


def make_models(config: ml_collections.ConfigDict
                ) -> tuple[dvae.DVAE, discriminator.MultiScaleDiscriminator]:
  """The DVAE (generator) and the multi-scale discriminator of `config`."""
  c, d = config.dvae, config.disc
  dtype = jnp.dtype(config.dtype)
  tup = lambda x: None if x is None else tuple(x)
  model = dvae.DVAE(
      channels=tup(c.channels), res_blocks=tup(c.res_blocks),
      decoder_res_blocks=tup(c.decoder_res_blocks), dim=c.dim, num_codes=c.num_codes,
      heads=c.heads, temperature=c.temperature, num_episodes=c.num_episodes,
      episode_dim=c.episode_dim, norm_groups=c.norm_groups, dtype=dtype)
  disc = discriminator.MultiScaleDiscriminator(
      channels=tup(d.channels), num_scales=d.num_scales, norm_groups=d.norm_groups, dtype=dtype)
  return model, disc


def _schedule(peak: float, warmup: int, decay: int, end_factor: float) -> optax.Schedule:
  return optax.warmup_cosine_decay_schedule(0.0, peak, warmup, max(decay, warmup + 1),
                                            peak * end_factor)


def make_optimizers(config: ml_collections.ConfigDict
                    ) -> tuple[optax.GradientTransformation, optax.GradientTransformation,
                               optax.Schedule]:
  """(generator tx, discriminator tx, generator lr schedule): clipped adamw, warmup-cosine.

  The discriminator's optimiser counts only its own updates, which start at
  `loss.adv_start_step`, so its cosine spans the steps left after that.
  """
  o = config.optim
  g_lr = _schedule(o.lr, o.warmup_steps, o.decay_steps, o.end_lr_factor)
  d_lr = _schedule(o.disc_lr, o.warmup_steps, o.decay_steps - max(config.loss.adv_start_step, 0),
                   o.end_lr_factor)
  tx_g = optax.chain(optax.clip_by_global_norm(o.clip_norm),
                     optax.adamw(g_lr, o.b1, o.b2, weight_decay=o.weight_decay))
  tx_d = optax.chain(optax.clip_by_global_norm(o.clip_norm),
                     optax.adamw(d_lr, o.disc_b1, o.disc_b2, weight_decay=o.weight_decay))
  return tx_g, tx_d, g_lr


def create_train_state(model: dvae.DVAE, disc: discriminator.MultiScaleDiscriminator,
                       tx_g: optax.GradientTransformation, tx_d: optax.GradientTransformation,
                       height: int, width: int, rng: jax.Array) -> loop.TrainState:
  """The initial state with boxed (logically partitioned) parameters, for
  `sharding.sharded_initializer`, which creates it unboxed and sharded."""
  g_rng, d_rng = jax.random.split(rng)
  frames = jnp.zeros((1, height, width, 3), jnp.uint8)
  generator = model.init({"params": g_rng}, frames, jnp.zeros((1,), jnp.int32),
                         train=False)["params"]
  discrim = disc.init(d_rng, jnp.zeros((1, height, width, 3), jnp.float32))["params"]
  params = {"generator": generator, "discriminator": discrim}
  return loop.TrainState.create(
      params, {"generator": tx_g.init(generator), "discriminator": tx_d.init(discrim)})


# ----------------------------------------------------------------------------------------------
# Steps


def adversarial_scale(step: jax.Array, start: int, ramp: int) -> jax.Array:
  """0 before `start`, then rising linearly to 1 over `ramp` steps (1 at once when ramp <= 0)."""
  progress = (step - start + 1).astype(jnp.float32) / max(ramp, 1)
  return jnp.where(step >= start, jnp.clip(progress, 0.0, 1.0), 0.0)


def train_step(state: loop.TrainState, batch: dict[str, jax.Array], *,
               model: dvae.DVAE, disc: discriminator.MultiScaleDiscriminator,
               tx_g: optax.GradientTransformation, tx_d: optax.GradientTransformation,
               lr_schedule: optax.Schedule, loss_config: ml_collections.ConfigDict, seed: int,
               rng_impl: str, nan_at_step: int
               ) -> tuple[loop.TrainState, dict[str, jax.Array]]:
  """One update of generator and discriminator on batch video uint8 [B, T, H, W, 3] and
  episode int32 [B]; returns the new state and scalar metrics (with the guard's)."""
  lc = loss_config
  rng = jax.random.fold_in(jax.random.key(seed, impl=rng_impl), state.step)
  frames = batch["video"]
  episode = jnp.broadcast_to(batch["episode"][:, None], frames.shape[:2])  # [B, T]
  target = dvae.frames_to_float(frames)  # float32 [B, T, H, W, 3] in [-1, 1]
  gp, dp = state.params["generator"], state.params["discriminator"]
  d_opt = state.opt_state["discriminator"]
  scale = adversarial_scale(state.step, lc.adv_start_step, lc.adv_ramp_steps)

  # The generator runs forward and backward once: its gradient is the pullback of d(loss)/d(recon),
  # where the adversarial part of that cotangent (and the discriminator's update) comes from a
  # `lax.cond` that skips the discriminator before `adv_start_step`.
  def generate(gp):
    return model.apply({"params": gp}, frames, episode, train=True, rngs={"gumbel": rng})

  recon, pullback, aux = jax.vjp(generate, gp, has_aux=True)
  l1, d_recon_l1 = jax.value_and_grad(losses.l1_loss)(recon, target)

  def discriminate(dp, frames):
    logits, d_aux = disc.apply({"params": dp}, frames)
    return logits, d_aux["features"]

  def with_discriminator(recon):
    # The discriminator runs forward once on the real frames and once on the reconstructions.
    # The reconstructions' pullback is taken twice: with the generator's cotangent for
    # d(loss)/d(recon), and with the discriminator loss's for its parameters (where the
    # reconstruction is a constant); XLA drops the half of each pullback that is not used.
    (real_logits, real_features), real_pullback = jax.vjp(lambda p: discriminate(p, target), dp)
    (fake_logits, fake_features), fake_pullback = jax.vjp(discriminate, dp, recon)

    def generator_loss(fake_logits, fake_features):
      terms = {"g_adv": losses.hinge_generator_loss(fake_logits),
               "fm": losses.feature_matching_loss(real_features, fake_features)}
      return scale * (lc.adv_weight * terms["g_adv"] + lc.fm_weight * terms["fm"]), terms

    (adv, terms), g_cotangent = jax.value_and_grad(generator_loss, argnums=(0, 1), has_aux=True)(
        fake_logits, fake_features)
    _, d_recon = fake_pullback(g_cotangent)
    d_loss, (real_ct, fake_ct) = jax.value_and_grad(losses.hinge_discriminator_loss,
                                                    argnums=(0, 1))(real_logits, fake_logits)
    no_features = lambda features: jax.tree.map(jnp.zeros_like, features)
    d_grads = jax.tree.map(jnp.add, real_pullback((real_ct, no_features(real_features)))[0],
                           fake_pullback((fake_ct, no_features(fake_features)))[0])
    mean = lambda t: jnp.mean(jnp.stack([jnp.mean(x) for x in t]))
    terms.update(d_loss=d_loss, d_real=mean(real_logits), d_fake=mean(fake_logits))
    updates, new_d_opt = tx_d.update(d_grads, d_opt, dp)
    return adv, d_recon, terms, d_grads, optax.apply_updates(dp, updates), new_d_opt

  def without_discriminator(recon):
    zero = jnp.zeros((), jnp.float32)
    terms = dict(g_adv=zero, fm=zero, d_loss=zero, d_real=zero, d_fake=zero)
    return zero, jnp.zeros_like(recon), terms, jax.tree.map(jnp.zeros_like, dp), dp, d_opt

  adversarial = state.step >= lc.adv_start_step
  if jax.default_backend() == "cpu":
    # XLA:CPU runs convolutions inside a conditional's branches without its fast conv kernels
    # (jax-ml/jax#12868; measured by nwt_jax.bench: the tiny step 6-8x slower), so on CPU both
    # branches run and a select keeps one; GPU/TPU skip the discriminator with the cond.
    adv, d_recon_adv, terms, d_grads, new_dp, new_d_opt = jax.tree.map(
        functools.partial(jnp.where, adversarial), with_discriminator(recon),
        without_discriminator(recon))
  else:
    adv, d_recon_adv, terms, d_grads, new_dp, new_d_opt = jax.lax.cond(
        adversarial, with_discriminator, without_discriminator, recon)
  # inject_nan scales the loss and, identically, its gradient (the product rule's factor).
  loss = loop.inject_nan(lc.l1_weight * l1 + adv, state.step, nan_at_step)
  d_recon = loop.inject_nan(lc.l1_weight * d_recon_l1 + d_recon_adv, state.step,
                                 nan_at_step)
  g_grads, = pullback(d_recon)
  terms["l1"] = l1
  g_updates, new_g_opt = tx_g.update(g_grads, state.opt_state["generator"], gp)
  new_state = state.replace(
      params={"generator": optax.apply_updates(gp, g_updates), "discriminator": new_dp},
      opt_state={"generator": new_g_opt, "discriminator": new_d_opt})
  grads = {"generator": g_grads, "discriminator": d_grads}
  state, guard = loop.apply_if_finite(state, new_state, (loss, terms["d_loss"]), grads)
  metrics = dict(
      loss=loss, **terms, adv_scale=scale, lr=lr_schedule(state.step - 1),
      g_grad_norm=optax.tree.norm(g_grads), d_grad_norm=optax.tree.norm(d_grads),
      batch_usage_min=jnp.min(aux["usage"]), batch_perplexity=jnp.mean(aux["perplexity"]),
      **guard)
  return state, metrics


def eval_step(params: PyTree, batch: dict[str, jax.Array], *,
              model: dvae.DVAE) -> dict[str, jax.Array]:
  """Eval-mode (argmax codes) reconstructions of video uint8 [N, H, W, 3] with episode [N]:
  {'recon': uint8 [N, H, W, 3], 'indices': int32 [N, gh, gw, heads]}."""
  recon, aux = model.apply({"params": params["generator"]}, batch["video"], batch["episode"],
                           train=False)
  recon = jnp.clip(jnp.round((recon + 1.0) * 127.5), 0, 255).astype(jnp.uint8)
  return {"recon": recon, "indices": aux["indices"]}


# ----------------------------------------------------------------------------------------------
# Set-up shared by train_and_evaluate, the tests and the benchmarks


@dataclasses.dataclass(frozen=True)
class Setup(loop.Setup):
  """`loop.Setup` (`model` is the DVAE, `eval_step(params, batch)` gives eval-mode
  {'recon', 'indices'}) with the discriminator."""
  disc: discriminator.MultiScaleDiscriminator


# The config sections a step depends on (not `train`: how long and how often).
STEP_FIELDS = ("model", "seed", "rng_impl", "dtype", "mesh", "data", "dvae", "disc", "loss",
               "optim", "debug")


def setup(config: ml_collections.ConfigDict, devices=None) -> Setup:
  """Models, mesh over `devices` (default all), sharded initializer and jitted steps.

  Cached by the STEP_FIELDS of `config` and the devices, so building it twice (tests, a
  benchmark after a run) compiles the steps once.
  """
  return _setup(loop.config_key(config, STEP_FIELDS),
                tuple(jax.devices() if devices is None else devices))


@functools.lru_cache(maxsize=8)
def _setup(config_json: str, devices: tuple[jax.Device, ...]) -> Setup:
  config = ml_collections.ConfigDict(json.loads(config_json))
  mesh = sharding.make_mesh(config.mesh, devices)
  model, disc = make_models(config)
  tx_g, tx_d, lr_schedule = make_optimizers(config)
  init = functools.partial(create_train_state, model, disc, tx_g, tx_d, config.data.height,
                           config.data.width)
  init_state, state_shardings = sharding.sharded_initializer(
      init, mesh, jax.random.key(config.seed, impl=config.rng_impl))
  step = functools.partial(
      train_step, model=model, disc=disc, tx_g=tx_g, tx_d=tx_d, lr_schedule=lr_schedule,
      loss_config=ml_collections.FrozenConfigDict(config.loss), seed=config.seed,
      rng_impl=config.rng_impl, nan_at_step=config.debug.nan_at_step)
  train, evaluate = loop.jit_steps(mesh, state_shardings, step,
                                   functools.partial(eval_step, model=model),
                                   compile_options.dvae(),
                                   constrain_activations=True)
  return Setup(config=config, mesh=mesh, model=model, init_state=init_state,
               state_shardings=state_shardings, train_step=train, eval_step=evaluate, disc=disc)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> loop.TrainState:
  """Trains (or resumes) the dVAE in `workdir`, evaluating every `train.eval_every` steps;
  returns the final state. What `python -m nwt_jax.train` calls for `config.model == 'dvae'`."""
  s = setup(config)
  eval_set = dvae_eval.load_eval_set(config)
  logging.info("dVAE: %d frames %dx%d -> %s grid x %d heads of %d codes; %d held-out frames.",
               config.data.batch_size * config.data.frames_per_example, config.data.height,
               config.data.width, tuple(d // s.model.downsample_factor for d in
                                        (config.data.height, config.data.width)),
               config.dvae.heads, config.dvae.num_codes, len(eval_set["video"]))
  train_iter = dvae_eval.FrameIterator(input_pipeline.create_iterator(
      config.data, "train", seed=config.seed, process_index=jax.process_index(),
      process_count=jax.process_count()))
  writer = metric_writer.create_writer(workdir)  # the loop's scalars and the eval's images
  try:
    return loop.run(config, workdir, s, train_iter,
                    eval_fn=dvae_eval.make_eval_fn(s, config, eval_set, workdir, writer),
                    writer=writer)
  finally:
    writer.close()
    train_iter.close()


def load_frozen(workdir: str, step: int | None = None):
  """(model, generator params, config) of the dVAE trained in `workdir`, at `step` (default: the
  latest checkpoint), for the stages after it (`nwt_jax.training.restore.dvae`, the prior's
  previews)."""

  def abstract_state(config):
    model, disc = make_models(config)
    tx_g, tx_d, _ = make_optimizers(config)
    init = functools.partial(create_train_state, model, disc, tx_g, tx_d, config.data.height,
                             config.data.width)
    return jax.eval_shape(lambda: nn.unbox(init(jax.random.key(0))))

  state, config = checkpoint.restore_frozen(workdir, "dvae", abstract_state, step)
  return make_models(config)[0], state.params["generator"], config

