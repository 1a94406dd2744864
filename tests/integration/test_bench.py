"""nwt_jax.bench and its PyTorch peer: the JSON record, parameter parity, loss parity with copied
weights, and generation executables that do not depend on the audio's length. No timing asserts:
speed figures live in the benchmark's output (README, Performance)."""

import copy
import json
import re
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

torch = pytest.importorskip("torch")

from configs import dvae as dvae_configs  # pylint: disable=g-import-not-at-top
from configs import prior as prior_configs  # pylint: disable=g-import-not-at-top
from nwt_jax import bench  # pylint: disable=g-import-not-at-top
from nwt_jax.training import losses  # pylint: disable=g-import-not-at-top
from benchmarks import torch_peer  # pylint: disable=g-import-not-at-top
from nwt_jax.training import dvae as train_dvae  # pylint: disable=g-import-not-at-top
from nwt_jax.training import prior as train_prior  # pylint: disable=g-import-not-at-top
from nwt_jax.models import dvae  # pylint: disable=g-import-not-at-top

PEAK = (1e11, "test")  # skip the 1 s CPU peak measurement in tests


def _small_dvae_config():
  """`tiny` shrunk so a train step compiles in seconds."""
  c = dvae_configs.get_config("tiny")
  c.data.batch_size, c.data.height, c.data.width = 2, 16, 16
  c.dvae.channels, c.dvae.res_blocks = (8, 16), (0, 1)
  c.dvae.dim, c.dvae.num_codes, c.dvae.heads, c.dvae.episode_dim = 16, 16, 2, 8
  c.disc.channels = (8, 16)
  return c


def _small_prior_config(decoder="far"):
  c = prior_configs.get_config(f"tiny,{decoder}")
  c.data.batch_size, c.data.frames_per_example = 2, 4
  c.prior.update(max_frames=4, d_model=32, num_heads=2, head_dim=16, mlp_dim=64,
                 temporal_layers=1, audio_layers=1, style_hidden=32, depth_dim=16,
                 depth_layers=1)
  return c


def _abstract_count(init):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nn.unbox(jax.eval_shape(init))))


def test_bench_module_imports_no_tf_torch_or_librosa():
  code = ("import sys; import nwt_jax.bench; "
          "bad = [m for m in ('tensorflow', 'tensorflow_datasets', 'librosa', 'clu', 'torch') "
          "if m in sys.modules]; print(bad)")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_dvae_step_record_has_every_field_with_peer():
  w = bench.dvae_workload(_small_dvae_config(), jax.devices()[:1])
  record = bench.bench_step(w, steps=2, warmup=1, peer="torch", peer_compile="off", block=1,
                            peak=PEAK)
  json.dumps(record)  # one JSON line
  assert record["what"] == "dvae_step" and record["throughput_unit"] == "frames/s"
  assert record["flops_per_step"] > 0 and record["step_s"] > 0 and record["compile_s"] > 0
  assert 0 < record["utilisation"] < 10  # the CPU peak is a measured matmul, not a bound
  assert record["peak_memory_bytes"] > record["argument_bytes"] > 0
  assert record["throughput"] == pytest.approx(2 / record["step_s"])
  assert record["peer_mode"] == "eager" and record["peer_step_s"] > 0
  assert record["jax_over_torch_speed"] == pytest.approx(record["peer_step_s"] / record["step_s"])
  assert record["peer_num_params"] == record["num_params"]
  for key in ("device_kind", "jax_version", "num_devices", "dtype", "torch_version"):
    assert record[key]
  # FLOPs: at least the forward convs of encoder + decoder (2 MACs each x frames), roughly.
  assert record["flops_per_step"] > 1e6


def test_prior_step_record_tokens():
  w = bench.prior_workload(_small_prior_config(), _small_dvae_config(), jax.devices()[:1])
  record = bench.bench_step(w, steps=2, warmup=1, peak=PEAK)
  assert record["throughput_unit"] == "tokens/s"
  assert record["units_per_step"] == 2 * 4 * 8 * 8 * 2  # B x T x grid (16/2)^2 x heads
  assert record["flops_per_step"] > 0 and 0 < record["utilisation"]


@pytest.mark.parametrize("model", ["dvae", "prior_far", "prior_mar"])
def test_peer_parameter_count_equals_jax_for_tiny(model):
  dc = dvae_configs.get_config("tiny")
  if model == "dvae":
    gen, disc = train_dvae.make_models(dc)
    frames = jnp.zeros((1, dc.data.height, dc.data.width, 3), jnp.uint8)
    jax_g = _abstract_count(lambda: gen.init(jax.random.key(0), frames, jnp.zeros((1,), jnp.int32),
                                             train=False)["params"])
    jax_d = _abstract_count(lambda: disc.init(jax.random.key(0), frames.astype(jnp.float32)))
    peer_g, peer_d = torch_peer.build_dvae(dc)
    assert (torch_peer.num_params(peer_g), torch_peer.num_params(peer_d)) == (jax_g, jax_d)
  else:
    pc = prior_configs.get_config(f"tiny,{model[6:]}")
    manifest = bench.manifest_from_dvae(dc, pc.data.frames_per_example)
    m = train_prior.make_model(pc, manifest)
    ex = train_prior.example_batch(manifest, pc.data.frames_per_example)
    jax_count = _abstract_count(lambda: m.init(jax.random.key(0), ex["codes"], ex["mel"],
                                               ex["episode"], train=False)["params"])
    assert torch_peer.num_params(torch_peer.build_prior(pc, manifest)) == jax_count


def test_dvae_peer_losses_equal_jax_with_copied_weights():
  c = _small_dvae_config()
  c.data.height, c.data.width = 16, 14  # odd grid sizes: exercises asymmetric 'SAME' padding
  gen, disc = train_dvae.make_models(c)
  batch = bench.dvae_batch(c)
  frames, episode = batch["video"][:, 0], batch["episode"]
  gp = nn.unbox(gen.init(jax.random.key(0), frames, episode, train=False)["params"])
  dp = nn.unbox(disc.init(jax.random.key(1), jnp.zeros(frames.shape, jnp.float32))["params"])
  (recon, _), state = gen.apply({"params": gp}, frames, episode, train=True,
                                rngs={"gumbel": jax.random.key(2)}, mutable=["intermediates"])
  gumbel = np.asarray(state["intermediates"]["quantizer"]["gumbel"][0])
  target = dvae.frames_to_float(frames)
  logits, aux = disc.apply({"params": dp}, jnp.concatenate([target, recon]))
  n = len(frames)
  half = lambda t, real: jax.tree.map(lambda x: x[:n] if real else x[n:], t)
  expected = {"l1": losses.l1_loss(recon, target),
              "g_adv": losses.hinge_generator_loss(half(logits, False)),
              "fm": losses.feature_matching_loss(half(aux["features"], True),
                                                 half(aux["features"], False)),
              "d": losses.hinge_discriminator_loss(half(logits, True), half(logits, False))}
  peer_g, peer_d = torch_peer.build_dvae(c)
  torch_peer.load_flax_params(peer_g, gp)
  torch_peer.load_flax_params(peer_d, dp)
  g_loss, d_loss, terms, _ = torch_peer.dvae_losses(
      peer_g, peer_d, torch.from_numpy(frames.copy()), torch.from_numpy(episode).long(),
      scale=1.0, loss_config=c.loss, gumbel=torch.from_numpy(gumbel.copy()))
  got = {**{k: v.item() for k, v in terms.items()}, "d": d_loss.item()}
  for key, value in expected.items():
    assert got[key] == pytest.approx(float(value), rel=1e-4, abs=1e-5), key

  # The peer's two gradient passes (as DVAETrainStep takes them) against JAX's autodiff.
  def generator_loss(gp):
    recon, _ = gen.apply({"params": gp}, frames, episode, train=True,
                         rngs={"gumbel": jax.random.key(2)})
    logits, aux = disc.apply({"params": dp}, jnp.concatenate([target, recon]))
    return (c.loss.l1_weight * losses.l1_loss(recon, target)
            + c.loss.adv_weight * losses.hinge_generator_loss(half(logits, False))
            + c.loss.fm_weight * losses.feature_matching_loss(half(aux["features"], True),
                                                              half(aux["features"], False)))

  def discriminator_loss(dp):
    logits, _ = disc.apply({"params": dp}, jnp.concatenate([target, recon]))
    return losses.hinge_discriminator_loss(half(logits, True), half(logits, False))

  norm = lambda grads: float(torch.sqrt(sum(g.square().sum() for g in grads)))
  peer_g_grads = torch.autograd.grad(g_loss, list(peer_g.parameters()), retain_graph=True)
  peer_d_grads = torch.autograd.grad(d_loss, list(peer_d.parameters()))
  jax_norms = jax.jit(lambda gp, dp: (optax.tree.norm(jax.grad(generator_loss)(gp)),
                                      optax.tree.norm(jax.grad(discriminator_loss)(dp))))
  g_norm, d_norm = jax_norms(gp, dp)
  assert norm(peer_g_grads) == pytest.approx(float(g_norm), rel=1e-4)
  assert norm(peer_d_grads) == pytest.approx(float(d_norm), rel=1e-4)


@pytest.mark.parametrize("decoder", ["far", "mar", "mar_local", "far_patch", "mar_patch"])
def test_prior_peer_loss_equals_jax_with_copied_weights(decoder):
  pc = _small_prior_config(decoder.split("_")[0])
  manifest = bench.manifest_from_dvae(_small_dvae_config(), pc.data.frames_per_example)
  # 'mar': depth attention over the whole frame; 'mar_local': one grid row and the one before;
  # '*_patch': `tiny`'s spatial path (2x2 patches, copy gate, FiLM, cond skip).
  pc.prior.depth_window_rows = int(decoder == "mar_local")
  change_weight = 1.0
  if decoder.endswith("_patch"):  # and the change-weighted loss, and the null audio's parameter
    pc.prior.update(spatial_patch=2, copy_gate=True, spatial_film=True, cond_skip=True,
                    audio_dropout=0.2)
    change_weight = 4.0
  model = train_prior.make_model(pc, manifest)
  batch = bench.prior_batch(pc, manifest)
  params = nn.unbox(model.init(jax.random.key(0), batch["codes"], batch["mel"], batch["episode"],
                               train=False)["params"])
  # Perturb the zero-initialised style output so the KL and z paths are exercised too (and the
  # copy gate's and FiLM's, so their paths are).
  out = params["style_encoder"]["out"]
  out["kernel"] = 0.1 * jax.random.normal(jax.random.key(3), out["kernel"].shape)
  for name in ("copy", "depth_copy", "depth_copy_bias", "film"):
    if name in params:
      params[name] = jax.tree.map(lambda x: jax.random.normal(jax.random.key(4), x.shape),
                                  params[name])
  noise = np.random.default_rng(1).normal(size=(2, pc.prior.style_dim)).astype(np.float32)
  mu, log_sigma = model.apply({"params": params}, batch["codes"], method=model.encode_style)
  logits, aux = model.apply({"params": params}, batch["codes"], batch["mel"], batch["episode"],
                            train=False, z=mu + jnp.exp(log_sigma) * noise)
  beta = 0.5
  expected = (losses.change_weighted_cross_entropy(logits, batch["codes"], change_weight)
              + beta * aux["kl"] / batch["codes"][0].size)
  peer = torch_peer.build_prior(pc, manifest).eval()  # as JAX's train=False: no frame dropout
  torch_peer.load_flax_params(peer, params)
  with torch.no_grad():
    loss, metrics = torch_peer.prior_loss(
        peer, torch.from_numpy(batch["codes"]).long(), torch.from_numpy(batch["mel"]),
        torch.from_numpy(batch["episode"]).long(), beta=beta, label_smoothing=0.0,
        change_weight=change_weight, noise=torch.from_numpy(noise))
  assert float(metrics["kl"]) == pytest.approx(float(aux["kl"]), rel=1e-4) and float(aux["kl"]) > 0
  assert float(loss) == pytest.approx(float(expected), rel=1e-4)


def test_guided_generation_decodes_with_and_without_the_audio():
  pc = _small_prior_config("far")
  assert pc.prior.audio_dropout > 0  # `tiny` learns the null audio
  g = bench.Generation(pc, _small_dvae_config(), overlap=1, audio_guidance=3.0)
  assert g.rows == 2
  frames = g.run(g.compile(7)[0], bench.synthetic_mel(7))
  assert frames.shape == (7, 16, 16, 3) and frames.dtype == np.uint8


def test_generation_executables_do_not_depend_on_audio_length():
  g = bench.Generation(_small_prior_config("far"), _small_dvae_config(), overlap=1)
  short, _ = g.compile(30 * 30)
  long_, _ = g.compile(600 * 30)
  assert short.keys() == long_.keys()  # the sampler and one renderer per window kind
  def strip(c):  # the HLO without source locations (the two calls sit on different test lines)
    text = re.sub(r",? ?metadata=\{[^}]*\}", "", c.as_text())
    # ... nor its debug tables of files, functions and stack frames (an executable loaded from
    # the persistent compilation cache keeps the tables of the call that compiled it).
    tables = re.compile(r"^(FileNames|FunctionNames|FileLocations|StackFrames)$|^\d+ ")
    return "\n".join(line for line in text.splitlines()
                     if "line=" not in line and not tables.match(line))
  for key in short:
    assert strip(short[key]) == strip(long_[key]), key
  mel = bench.synthetic_mel(11)
  frames = g.run(short, mel)
  assert frames.shape == (11, 16, 16, 3) and frames.dtype == np.uint8
  assert g.windows(11) == [(0, 4), (3, 3), (6, 3), (9, 3)]  # 4-frame windows, 1 frame overlap


def test_peak_flops_table_and_cpu_measurement():
  assert dict(bench.PEAK_FLOPS)["H200"] == 989e12 and dict(bench.PEAK_FLOPS)["TPU v4"] == 275e12
  assert bench.measure_matmul_flops(seconds=0.05, n=128, chain=2) > 1e8
