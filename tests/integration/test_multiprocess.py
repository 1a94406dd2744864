"""Two local JAX processes (gloo collectives, 2 virtual CPU devices each) stand in for a 2-host
pod: `python -m nwt_jax.train` on them must give the losses and parameters of one process with 4
devices."""

import os
import pathlib
import random
import re
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from nwt_jax.training import checkpoint
from nwt_jax.evaluation import report
import token_fixtures
import toy
import xla_env
from nwt_jax.training import restore

REPO = pathlib.Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow, pytest.mark.multiprocess]

PRIOR_OVERRIDES = dict(
    **{"prior.max_frames": 4, "prior.d_model": 32, "prior.num_heads": 2, "prior.head_dim": 16,
       "prior.mlp_dim": 64, "prior.temporal_layers": 1, "prior.spatial_layers": 0,
       "prior.audio_layers": 1, "prior.code_embed_dim": 8, "prior.style_hidden": 32},
    **{"data.batch_size": 4, "data.frames_per_example": 4, "train.num_steps": 3,
       "train.log_every": 1, "train.eval_every": 0, "train.checkpoint_every": 0,
       "train.eval_batches": 1, "train.eval_batch_size": 4, "mesh.data": -1, "mesh.fsdp": 2})

# The tiny dVAE at its smallest: 16x16 frames, x2 to an 8x8 grid of 2 heads x 8 codes; the
# discriminator (and its optimiser) update from step 2 on.
DVAE_OVERRIDES = dict(
    **{"data.height": 16, "data.width": 16, "data.batch_size": 4, "data.num_train_clips": 8,
       "data.num_validation_clips": 4, "data.num_workers": 1},
    **{"dvae.channels": "(4,8)", "dvae.res_blocks": "(0,0)", "dvae.dim": 16, "dvae.heads": 2,
       "dvae.num_codes": 8, "dvae.episode_dim": 4, "dvae.norm_groups": 2,
       "disc.channels": "(4,8)", "disc.num_scales": 1, "disc.norm_groups": 2,
       "loss.adv_start_step": 2, "loss.adv_ramp_steps": 2, "optim.warmup_steps": 2},
    **{"train.log_every": 1, "train.eval_every": 0, "train.keep_checkpoints": 100,
       "train.eval_batch_size": 4, "train.eval_frames_per_clip": 1, "train.eval_batches": 1,
       "train.num_samples": 0, "mesh.data": -1, "mesh.fsdp": 2})
DVAE_STEPS = 16  # the uninterrupted run; the 2-process run compares its first DVAE_MP_STEPS
DVAE_MP_STEPS = 4


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _env(devices: int, cache: pathlib.Path | None = None) -> dict[str, str]:
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO),
             XLA_FLAGS=xla_env.xla_flags(devices))
  if cache:  # a persistent compilation cache: a restarted process loads its executables
    env.update(JAX_COMPILATION_CACHE_DIR=str(cache), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
  return env


def _train_args(config: str, workdir: pathlib.Path, overrides: dict) -> list[str]:
  args = [sys.executable, "-m", "nwt_jax.train", f"--config={config}", f"--workdir={workdir}"]
  return args + [f"--config.{k}={v}" for k, v in overrides.items()]


def _run_processes(args: list[str], *, processes: int, devices: int,
                   cache: pathlib.Path | None = None) -> None:
  """`args` (a command taking --coordinator_address/--num_processes/--process_id) on
  `processes` local processes of `devices` CPU devices each; all must exit 0."""
  port = _free_port()
  procs = []
  for i in range(processes):
    extra = ([f"--coordinator_address=127.0.0.1:{port}", f"--num_processes={processes}",
              f"--process_id={i}"] if processes > 1 else [])
    procs.append(subprocess.Popen(args + extra, cwd=REPO, env=_env(devices, cache),
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
  for i, proc in enumerate(procs):
    output, _ = proc.communicate(timeout=400)
    assert proc.returncode == 0, f"process {i}:\n{output[-3000:]}"


def _train(config: str, workdir: pathlib.Path, overrides: dict, *, processes: int,
           devices: int, cache: pathlib.Path | None = None) -> None:
  """`python -m nwt_jax.train` on `processes` local processes of `devices` CPU devices each."""
  _run_processes(_train_args(config, workdir, overrides), processes=processes, devices=devices,
                 cache=cache)


def _losses(workdir: pathlib.Path) -> np.ndarray:
  steps, values = report.read_scalars(str(workdir))["train/loss"]
  return values[np.argsort(steps)]


def _assert_same_run(single: pathlib.Path, multi: pathlib.Path, restore, steps: int = 3) -> None:
  """The first `steps` losses and the parameters at `steps` of two runs agree."""
  np.testing.assert_allclose(_losses(multi), _losses(single)[:steps], rtol=1e-5)
  assert len(_losses(multi)) == steps
  _, params_single, _ = restore(str(single), step=steps)
  _, params_multi, _ = restore(str(multi))
  for a, b in zip(jax.tree.leaves(params_single), jax.tree.leaves(params_multi), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_prior_on_two_processes_equals_one_process_with_four_devices(tmp_path):
  from nwt_jax.training import prior as train_prior
  tokens = tmp_path / "tokens"
  token_fixtures.make_tokens(tokens)
  overrides = {**PRIOR_OVERRIDES, "data.tokens_dir": tokens}
  _train("configs/prior.py:tiny,far", tmp_path / "one", overrides, processes=1, devices=4)
  _train("configs/prior.py:tiny,far", tmp_path / "two", overrides, processes=2, devices=2)
  _assert_same_run(tmp_path / "one", tmp_path / "two", restore.prior)


@pytest.fixture(scope="module")
def dvae_reference(tmp_path_factory):
  """One process x 4 devices, DVAE_STEPS uninterrupted steps of the tiny dVAE (checkpoints at
  DVAE_MP_STEPS and at the end), and the compilation cache its executables went into."""
  root = tmp_path_factory.mktemp("dvae")
  overrides = {**DVAE_OVERRIDES, "train.num_steps": DVAE_STEPS,
               "train.checkpoint_every": DVAE_MP_STEPS}
  _train("configs/dvae.py:tiny", root / "one", overrides, processes=1, devices=4,
         cache=root / "jax_cache")
  return root / "one", root / "jax_cache"


def test_dvae_on_two_processes_equals_one_process_with_four_devices(dvae_reference, tmp_path):
  from nwt_jax.training import dvae as train_dvae
  one, _ = dvae_reference
  overrides = {**DVAE_OVERRIDES, "train.num_steps": DVAE_MP_STEPS,
               "train.checkpoint_every": 0}
  _train("configs/dvae.py:tiny", tmp_path / "two", overrides, processes=2, devices=2)
  _assert_same_run(one, tmp_path / "two", restore.dvae, steps=DVAE_MP_STEPS)


# --- SIGKILL at random moments ----------------------------------------------------------------

KILLS = 5  # 3 aimed mid-step, 2 mid-checkpoint-write


def _committed(checkpoints: pathlib.Path) -> list[int]:
  """Steps whose checkpoint was finalized (orbax renames `<step>.orbax-checkpoint-tmp*` to
  `<step>` once every file is written)."""
  if not checkpoints.exists():
    return []
  return sorted(int(p.name) for p in checkpoints.iterdir()
                if p.name.isdigit() and (p / "commit_success.txt").exists())


def _writing(checkpoints: pathlib.Path) -> bool:
  """Whether a checkpoint is being written (its temporary directory exists)."""
  return checkpoints.exists() and any(".orbax-checkpoint-tmp" in p.name
                                      for p in checkpoints.iterdir())


def _wait_until(condition, proc: subprocess.Popen, log: pathlib.Path, timeout=300.0) -> None:
  deadline = time.monotonic() + timeout
  while not condition():
    assert proc.poll() is None, f"the run ended before it was killed:\n{log.read_text()[-3000:]}"
    assert time.monotonic() < deadline, log.read_text()[-3000:]
    time.sleep(0.002)


def _resumed_step(log: pathlib.Path) -> int:
  """The step a run's log says it resumed from (0: it started from scratch)."""
  found = re.findall(r"Resumed from \S+ at step (\d+)", log.read_text())
  return int(found[0]) if found else 0


def test_sigkill_at_random_moments_then_resume_gives_the_uninterrupted_params(
    dvae_reference, tmp_path):
  """`python -m nwt_jax.train` killed with SIGKILL 5 times (checkpoints every step), rerun each
  time, reaches DVAE_STEPS with the uninterrupted run's parameters bit for bit, and every
  rerun resumed from the newest fully written checkpoint (never a half-written one)."""
  from nwt_jax.training import dvae as train_dvae
  reference, cache = dvae_reference
  workdir, rng = tmp_path / "killed", random.Random(8)
  checkpoints = workdir / "checkpoints"
  args = _train_args("configs/dvae.py:tiny", workdir, {
      **DVAE_OVERRIDES, "train.num_steps": DVAE_STEPS, "train.checkpoint_every": 1,
      "train.keep_checkpoints": 2})
  expected_resume, killed_while_writing = [0], []
  for kill in range(KILLS + 1):
    log = tmp_path / f"run{kill}.log"
    with open(log, "w") as out:
      proc = subprocess.Popen(args, cwd=REPO, env=_env(4, cache), stdout=out,
                              stderr=subprocess.STDOUT)
    try:
      if kill == KILLS:  # the last rerun goes to the end
        assert proc.wait(timeout=300) == 0, log.read_text()[-3000:]
        break
      # Once this run has committed a step of its own (it restored and trains), wait for a
      # checkpoint write to start (odd kills) or for one to finish, so the next step runs
      # (even kills), then a seeded random delay; where the kill lands is recorded.
      _wait_until(lambda: max(_committed(checkpoints), default=0) > expected_resume[-1],
                  proc, log)
      _wait_until(lambda: _writing(checkpoints) == bool(kill % 2), proc, log)
      time.sleep(rng.uniform(0.0, 0.03))
      killed_while_writing.append(_writing(checkpoints))
      proc.kill()  # SIGKILL
      proc.wait(timeout=60)
    finally:
      if proc.poll() is None:
        proc.kill()
    # What the rerun must resume from: the newest checkpoint whose writing had finished.
    expected_resume.append(_committed(checkpoints)[-1])
    assert expected_resume[-1] < DVAE_STEPS
  resumed = [_resumed_step(tmp_path / f"run{k}.log") for k in range(KILLS + 1)]
  assert resumed == expected_resume, (resumed, expected_resume)
  assert sorted(set(killed_while_writing)) == [False, True], killed_while_writing
  _, params, _ = restore.dvae(str(workdir))
  _, want, _ = restore.dvae(str(reference), step=DVAE_STEPS)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(want), strict=True):
    np.testing.assert_array_equal(a, b)


# --- checkpoint portability: 8 devices -> 2 processes -> 8 devices ----------------------------


def test_checkpoint_from_eight_devices_continues_on_two_processes_and_back(tmp_path):
  """The toy trainer (wired as the real ones are): 10 steps on 8 devices in this process, then
  2 processes x 2 devices restore that checkpoint (bitwise the saved state) and train to step
  20 (the uninterrupted run's parameters), and their step-20 checkpoint restores here onto 8
  devices bitwise."""
  import toy_worker
  config = lambda steps: toy_worker.config(steps).copy_and_resolve_references()
  saved = jax.device_get(toy.train(config(10), tmp_path / "run", writer=toy.RecordingWriter()))
  straight = jax.device_get(toy.train(config(20), tmp_path / "straight",
                                      writer=toy.RecordingWriter()))
  _run_processes([sys.executable, "tests/support/toy_worker.py", str(tmp_path / "run"), "20",
                  str(tmp_path)], processes=2, devices=2)
  with np.load(tmp_path / "restored.npz") as restored, np.load(tmp_path / "final.npz") as final:
    restored, final = dict(restored), dict(final)
  want = toy_worker.flat(saved)
  assert restored.keys() == want.keys() and int(restored[".step"]) == 10
  for key in want:
    np.testing.assert_array_equal(restored[key], want[key], err_msg=key)
  for key, value in toy_worker.flat(straight).items():
    np.testing.assert_allclose(final[key], value, rtol=1e-5, atol=1e-7, err_msg=key)
  eight = config(20)
  eight.mesh = dict(data=2, fsdp=2, model=2)
  _, init_state, shardings, _, _ = toy.setup(eight)
  with checkpoint.Checkpointer(tmp_path / "run", eight) as ckpt:
    assert ckpt.latest_step() == 20
    back, _ = ckpt.restore(checkpoint.abstract_like(jax.eval_shape(init_state), shardings))
  assert len(back.params["Dense_0"]["kernel"].sharding.device_set) == 8
  for key, value in toy_worker.flat(jax.device_get(back)).items():
    np.testing.assert_array_equal(value, final[key], err_msg=key)
