"""The benchmarks (benchmarks/, run by `python -m nwt_jax.bench`) and the PyTorch peer: the JSON
records, the peak FLOP/s lookup, parameter parity, loss parity with copied weights, and the
generation benchmark: it decodes what `Generator` decodes, and the executables it compiles do not
depend on the audio's length. No timing asserts: speed figures live in the benchmark's output
(docs/performance.md). The tests import the library, not the CLI module (CLI modules define absl
flags at import)."""

import json
import os
import pathlib
import subprocess
import sys
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from benchmarks import generation
from benchmarks import measure
from benchmarks import steps
from benchmarks import workloads
from nwt_jax import presets
from nwt_jax.inference import generator as generator_lib
from nwt_jax.inference import sampling
from nwt_jax.training import losses
from nwt_jax.training import dvae as train_dvae
from nwt_jax.training import prior as train_prior
from nwt_jax.models import dvae

try:
  import torch  # pylint: disable=g-import-not-at-top
  from benchmarks import torch_peer  # pylint: disable=g-import-not-at-top
except ImportError:  # the peer's tests skip; the rest need no torch
  torch = torch_peer = None
needs_torch = pytest.mark.skipif(torch is None, reason="the PyTorch peer needs torch")

PEAK = (1e11, "test")  # skip the 1 s CPU peak measurement in tests


def _small_dvae_config():
  """`tiny` shrunk so a train step compiles in seconds."""
  c = presets.load_config("configs/dvae.py:tiny")
  c.data.batch_size, c.data.height, c.data.width = 2, 16, 16
  c.dvae.channels, c.dvae.res_blocks = (8, 16), (0, 1)
  c.dvae.dim, c.dvae.num_codes, c.dvae.heads, c.dvae.episode_dim = 16, 16, 2, 8
  c.disc.channels = (8, 16)
  return c


# The PyTorch peer has no identity anchor (benchmarks/torch_peer.py NOT_IN_PEER): the peer tests
# compare the prior without it.
PEER_ARCHITECTURE = dict(anchor=False, prev_code_noise=0.0)


def _small_prior_config(decoder="far"):
  c = presets.load_config(f"configs/prior.py:tiny,{decoder}")
  c.data.batch_size, c.data.frames_per_example = 2, 4
  c.prior.update(max_frames=4, d_model=32, num_heads=2, head_dim=16, mlp_dim=64,
                 temporal_layers=1, audio_layers=1, style_hidden=32, depth_dim=16,
                 depth_layers=1, **PEER_ARCHITECTURE)
  return c


def _abstract_count(init):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nn.unbox(jax.eval_shape(init))))


ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_bench_modules_import_nothing_the_gpu_machines_lack():
  code = ("import sys; import nwt_jax.bench, benchmarks.run, benchmarks.generation; "
          "bad = [m for m in ('tensorflow', 'tensorflow_datasets', 'librosa', 'clu', 'torch', "
          "'imageio_ffmpeg') if m in sys.modules]; print(bad)")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                       cwd=ROOT)
  assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_bench_cli_outside_a_clone_says_where_to_run_it(tmp_path):
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  out = subprocess.run(
      [sys.executable, "-m", "nwt_jax.bench", "--what=generate",
       f"--config={ROOT}/configs/prior.py:tiny,far", f"--dvae_config={ROOT}/configs/dvae.py:tiny"],
      capture_output=True, text=True, cwd=tmp_path, env=env, check=False)
  assert out.returncode == 1, out.stderr
  assert out.stderr.strip().splitlines()[-1].startswith("error: the benchmarks/ folder"), out.stderr
  assert "root of a clone" in out.stderr and "Traceback" not in out.stderr


@needs_torch
def test_dvae_step_record_has_every_field_with_peer():
  w = workloads.dvae_workload(_small_dvae_config(), jax.devices()[:1])
  record = steps.bench_step(w, steps=2, warmup=1, peer="torch", peer_compile="off", block=1,
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
  w = workloads.prior_workload(_small_prior_config(), _small_dvae_config(), jax.devices()[:1])
  record = steps.bench_step(w, steps=2, warmup=1, peak=PEAK)
  assert record["throughput_unit"] == "tokens/s"
  assert record["units_per_step"] == 2 * 4 * 8 * 8 * 2  # B x T x grid (16/2)^2 x heads
  assert record["flops_per_step"] > 0 and 0 < record["utilisation"]


@needs_torch
@pytest.mark.parametrize("model", ["dvae", "prior_far", "prior_mar"])
def test_peer_parameter_count_equals_jax_for_tiny(model):
  dc = presets.load_config("configs/dvae.py:tiny")
  if model == "dvae":
    gen, disc = train_dvae.make_models(dc)
    frames = jnp.zeros((1, dc.data.height, dc.data.width, 3), jnp.uint8)
    jax_g = _abstract_count(lambda: gen.init(jax.random.key(0), frames, jnp.zeros((1,), jnp.int32),
                                             train=False)["params"])
    jax_d = _abstract_count(lambda: disc.init(jax.random.key(0), frames.astype(jnp.float32)))
    peer_g, peer_d = torch_peer.build_dvae(dc)
    assert (torch_peer.num_params(peer_g), torch_peer.num_params(peer_d)) == (jax_g, jax_d)
  else:
    pc = presets.load_config(f"configs/prior.py:tiny,{model[6:]}")
    pc.prior.update(PEER_ARCHITECTURE)
    manifest = workloads.manifest_from_dvae(dc, pc.data.frames_per_example)
    m = train_prior.make_model(pc, manifest)
    ex = train_prior.example_batch(manifest, pc.data.frames_per_example)
    jax_count = _abstract_count(lambda: m.init(jax.random.key(0), ex["codes"], ex["mel"],
                                               ex["episode"], train=False)["params"])
    assert torch_peer.num_params(torch_peer.build_prior(pc, manifest)) == jax_count


@needs_torch
def test_dvae_peer_losses_equal_jax_with_copied_weights():
  c = _small_dvae_config()
  c.data.height, c.data.width = 16, 14  # odd grid sizes: exercises asymmetric 'SAME' padding
  gen, disc = train_dvae.make_models(c)
  batch = workloads.dvae_batch(c)
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


@needs_torch
@pytest.mark.parametrize("decoder", ["far", "mar", "mar_local", "far_patch", "mar_patch"])
def test_prior_peer_loss_equals_jax_with_copied_weights(decoder):
  pc = _small_prior_config(decoder.split("_")[0])
  manifest = workloads.manifest_from_dvae(_small_dvae_config(), pc.data.frames_per_example)
  # 'mar': depth attention over the whole frame; 'mar_local': one grid row and the one before;
  # '*_patch': `tiny`'s spatial path (2x2 patches, copy gate, FiLM, cond skip).
  pc.prior.depth_window_rows = int(decoder == "mar_local")
  change_weight = 1.0
  if decoder.endswith("_patch"):  # and the change-weighted loss, and the null audio's parameter
    pc.prior.update(spatial_patch=2, copy_gate=True, spatial_film=True, cond_skip=True,
                    audio_dropout=0.2)
    change_weight = 4.0
  model = train_prior.make_model(pc, manifest)
  batch = workloads.prior_batch(pc, manifest)
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


def test_peak_flops_lookup_and_cpu_measurement():
  assert measure.nominal_peak_flops("NVIDIA H100 80GB HBM3") == (989e12, "H100")
  assert measure.nominal_peak_flops("NVIDIA H200") == (989e12, "H200")
  assert measure.nominal_peak_flops("TPU v5 lite") == (197e12, "TPU v5 lite")  # not TPU v5's
  assert measure.nominal_peak_flops("TPU v5p") == (459e12, "TPU v5p")
  assert measure.nominal_peak_flops("TPU v4") == (275e12, "TPU v4")
  assert measure.nominal_peak_flops("cpu") is None
  gpu = lambda kind: types.SimpleNamespace(device_kind=kind, platform="gpu")
  assert measure.device_peak_flops(gpu("NVIDIA H200"))[0] == 989e12
  with pytest.raises(ValueError, match="add it to PEAK_FLOPS"):
    measure.device_peak_flops(gpu("NVIDIA GeForce GTX 480"))
  peak, source = measure.device_peak_flops(jax.devices("cpu")[0], seconds=0.1)
  assert source == "measured float32 jnp.dot"
  # Above 1 GFLOP/s, below every core doing two 16-wide float32 FMAs a cycle at 5 GHz.
  assert 1e9 < peak < (os.cpu_count() or 1) * 5e9 * 64


def _generation(decoder="far", bank_frames=8, **options):
  """Small random-init models and a factory of their Generator (4-frame windows, overlap 1)."""
  models = generation.random_models(_small_prior_config(decoder), _small_dvae_config(),
                                    bank_frames=bank_frames)
  make = lambda: generator_lib.Generator(models, sampling.SamplingOptions(**options), overlap=1)
  return models, make


def test_generation_decodes_what_the_generator_decodes():
  models, make = _generation()
  assert models.window_frames == 4 and models.frame_bank.shape == (8, 8, 8, 2)
  mel, episodes, z = generation.inputs(models, 11, seed=3)
  assert mel.shape == (44, 80) and episodes.shape == (11,) and z.shape == (1, 16)
  episodes[5:] = 1  # a switch: a cut, and each frame rendered with its own episode
  frames = generation.decode(make(), mel, episodes, z, seed=3)
  g = make()
  expected = g.frames(g.codes(mel, episodes, z, 3), episodes)
  assert frames.shape == (1, 11, 16, 16, 3) and frames.dtype == np.uint8
  np.testing.assert_array_equal(frames, expected)
  other = generation.decode(make(), mel, episodes, z, seed=4)
  assert not np.array_equal(frames, other)  # the seed is the sampler's


def test_generation_executables_do_not_depend_on_audio_length():
  _, make = _generation()
  short = generation.executables(make, 30 * 30)
  long_ = generation.executables(make, 150 * 30)
  # The same executables (function and abstract arguments) for both lengths ...
  assert set(short) == set(long_)
  assert {e.attribute for e in short.values()} == {"_sampler", "_render", "_pick_opening"}
  # ... the sampler called once per window (4 frames, the first repeating the last window's last
  # one), the opening picked once, and the renderer once per DECODE_CHUNK new frames (a window's
  # 3 new frames alone would pad most of a call).
  for executables, frames in ((short, 900), (long_, 4500)):
    calls = {e.attribute: e.calls for e in executables.values()}
    windows = len(list(generator_lib.windows(frames, 4, 1)))
    assert calls == {"_sampler": windows, "_render": _render_calls(frames), "_pick_opening": 1}
    assert windows == -(-(frames - 1) // 3)
  _, compiled, seconds = generation.compile_generator(make, short)
  assert compiled.keys() == short.keys() and seconds > 0


def _render_calls(frames: int) -> int:
  """Decoder calls of `job.render_in_chunks`: whole DECODE_CHUNKs, then one for the rest."""
  return -(-frames // generator_lib.DECODE_CHUNK)


@pytest.mark.parametrize("decoder,guidance", [("far", 3.0), ("mar", 1.0)])
def test_generation_record(decoder, guidance):
  pc = _small_prior_config(decoder)
  assert pc.prior.audio_dropout > 0  # `tiny` learns the null audio guidance needs
  record = generation.bench_generate(
      pc, _small_dvae_config(), audio_seconds=0.4, overlap=1, bank_frames=8,
      options=sampling.SamplingOptions(audio_guidance=guidance), compile_check=False, peak=PEAK)
  json.dumps(record)  # one JSON line
  assert record["decoder"] == decoder and record["frames"] == 12 and record["windows"] == 4
  assert record["window_frames"] == 4 and record["overlap_frames"] == 1
  bank = {"pick_opening": 1} if decoder == "far" else {}  # a MAR prior draws its first frame
  # 12 frames in 4 windows, rendered in one decoder call.
  assert record["executable_calls"] == {"sampler": 4, "render": 1, **bank}
  assert record["rtf"] == pytest.approx(record["wall_s"] / 0.4)
  assert record["flops_per_step"] == pytest.approx(record["flops_total"] / 12)
  assert record["flops_total"] > 0 and record["compile_s"] > 0
  assert record["peak_memory_bytes"] > record["argument_bytes"] > 0
