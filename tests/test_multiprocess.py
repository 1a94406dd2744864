"""Two local JAX processes (gloo collectives, 2 virtual CPU devices each) stand in for a 2-host
pod: `python -m nwt_jax.train` on them must give the losses and parameters of one process with 4
devices."""

import os
import pathlib
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from nwt_jax import report
import token_fixtures

REPO = pathlib.Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slow, pytest.mark.multiprocess]

PRIOR_OVERRIDES = dict(
    **{"prior.max_frames": 4, "prior.d_model": 32, "prior.num_heads": 2, "prior.head_dim": 16,
       "prior.mlp_dim": 64, "prior.temporal_layers": 1, "prior.spatial_layers": 0,
       "prior.audio_layers": 1, "prior.code_embed_dim": 8, "prior.style_hidden": 32},
    **{"data.batch_size": 4, "data.frames_per_example": 4, "train.num_steps": 3,
       "train.log_every": 1, "train.eval_every": 0, "train.checkpoint_every": 0,
       "train.eval_batches": 1, "train.eval_batch_size": 4, "mesh.data": -1, "mesh.fsdp": 2})


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _train(config: str, workdir: pathlib.Path, overrides: dict, *, processes: int,
           devices: int) -> None:
  """`python -m nwt_jax.train` on `processes` local processes of `devices` CPU devices each."""
  args = [sys.executable, "-m", "nwt_jax.train", f"--config={config}", f"--workdir={workdir}"]
  args += [f"--config.{k}={v}" for k, v in overrides.items()]
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO),
             # Lowest XLA effort: the steps run 3 times, compile time dominates.
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices} "
             "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true")
  port = _free_port()
  procs = []
  for i in range(processes):
    extra = ([f"--coordinator_address=127.0.0.1:{port}", f"--num_processes={processes}",
              f"--process_id={i}"] if processes > 1 else [])
    procs.append(subprocess.Popen(args + extra, cwd=REPO, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True))
  for i, proc in enumerate(procs):
    output, _ = proc.communicate(timeout=400)
    assert proc.returncode == 0, f"process {i}:\n{output[-3000:]}"


def _losses(workdir: pathlib.Path) -> np.ndarray:
  steps, values = report.read_scalars(str(workdir))["train/loss"]
  return values[np.argsort(steps)]


def _assert_same_run(single: pathlib.Path, multi: pathlib.Path, restore) -> None:
  np.testing.assert_allclose(_losses(multi), _losses(single), rtol=1e-5)
  assert len(_losses(single)) == 3
  _, params_single, _ = restore(str(single))
  _, params_multi, _ = restore(str(multi))
  for a, b in zip(jax.tree.leaves(params_single), jax.tree.leaves(params_multi)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_prior_on_two_processes_equals_one_process_with_four_devices(tmp_path):
  from nwt_jax import train_prior
  tokens = tmp_path / "tokens"
  token_fixtures.make_tokens(tokens)
  overrides = {**PRIOR_OVERRIDES, "data.tokens_dir": tokens}
  _train("configs/prior.py:tiny,far", tmp_path / "one", overrides, processes=1, devices=4)
  _train("configs/prior.py:tiny,far", tmp_path / "two", overrides, processes=2, devices=2)
  _assert_same_run(tmp_path / "one", tmp_path / "two", train_prior.restore_frozen)
