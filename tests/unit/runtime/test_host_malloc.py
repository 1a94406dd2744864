"""host_malloc: XLA:CPU's per-step buffer stays mapped (fewer page faults), CPU-only."""

import os
import subprocess
import sys

import pytest

# A step whose temporary buffers (3000 x 3000 float32 matrices) dwarf its arguments, run 2 times:
# minor page faults per call with and without the settings, as "<applied> <faults per call>".
_PROGRAM = """
import resource, sys
from nwt_jax.runtime import host_malloc
applied = host_malloc.tune_for_cpu() if sys.argv[1] == "tune" else False
import jax, jax.numpy as jnp
f = jax.jit(lambda x: jnp.sum(jnp.sin(jnp.outer(x, x)) @ jnp.cos(jnp.outer(x, x))))
x = jnp.linspace(0.0, 1.0, 3000)
f(x).block_until_ready()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(2):
  f(x).block_until_ready()
print(applied, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 2)
"""


def _run(mode: str, **env) -> tuple[str, float]:
  out = subprocess.run([sys.executable, "-c", _PROGRAM, mode], check=True, capture_output=True,
                       text=True, env={**os.environ, **env}).stdout.split()
  return out[0], float(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_settings_keep_the_step_buffers_mapped():
  applied, tuned = _run("tune")
  _, plain = _run("plain")
  assert applied == "True"
  # Mapped anew, the temporaries fault in ~400k pages a call (2-core CI machine); kept, ~3k.
  assert plain > 10_000, plain
  assert tuned < plain / 5, (tuned, plain)


def test_nothing_changes_where_jax_runs_on_an_accelerator():
  program = "from nwt_jax.runtime import host_malloc; print(host_malloc.tune_for_cpu())"
  out = subprocess.run([sys.executable, "-c", program], check=True, capture_output=True,
                       text=True, env={**os.environ, "JAX_PLATFORMS": "tpu"}).stdout
  assert out.strip() == "False"
