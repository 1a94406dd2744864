"""Speech in, talking-head video out.

    python -m nwt_jax.generate --dvae_workdir=runs/demo/dvae --prior_workdir=runs/demo/prior \\
        --audio=speech.wav --output=out.mp4 [--step=N] \\
        [--episode=3 | --episode=alice | --episode_schedule=0:3,4.5:5 | =alice:0,bob:12.5] \\
        [--style=random | --style=reference:clip.mp4 | --style=z:0.1,-2,...] [--traverse_dim=K] \\
        [--temperature=1.0 --top_k=0 --top_p=1.0 --audio_guidance=1.0 --change_threshold=0 \\
         --opening=bank --seed=0]

Episodes go by id or, where the workdirs hold `episodes.json` (written by training on a `folder`
dataset), by name. The work is `nwt_jax.inference.job.generate`; bad input is one `error: ...`
line, exit code 1 and no output file.
"""

from absl import flags
from etils import epath

from nwt_jax import cli
from nwt_jax import errors
from nwt_jax.data import episodes as episodes_lib
from nwt_jax.inference import controls
from nwt_jax.inference import generator
from nwt_jax.inference import job

FLAGS = flags.FLAGS
cli.define_workdir_flags()
flags.DEFINE_string("audio", None, "Input audio: any file ffmpeg reads (wav, mp3, m4a, a video).")
flags.DEFINE_string("output", None, "Output .mp4 (H.264 + the input audio as AAC).")
flags.DEFINE_string("episode", "0", "Episode for the whole video: its id, or its name (the "
                    "folder it was built from) where the workdirs hold episodes.json.")
flags.DEFINE_string("episode_schedule", "",
                    "Episode changes from 0 s: SECONDS:EPISODE,... (e.g. 0:3,4.5:5) or, with "
                    "named episodes, NAME:SECONDS,... (e.g. alice:0,bob:12.5).")
flags.DEFINE_integer("step", None, "The prior's checkpoint step (default: the latest).")
flags.DEFINE_string("style", "random", "random | reference:CLIP.mp4 | z:V1,V2,... (style_dim).")
flags.DEFINE_integer("traverse_dim", -1,
                     "If >= 0: a grid video of that style dimension moved by -2..2 sigma.")
cli.define_sampling_flags()


def _check_step(prior_workdir: str, step: int | None) -> None:
  """--step must name a finished checkpoint of the prior; the error lists those there are."""
  checkpoints = epath.Path(prior_workdir) / "checkpoints"
  if step is None or not checkpoints.is_dir() or (checkpoints / str(step)).is_dir():
    return
  steps = sorted(int(p.name) for p in checkpoints.iterdir() if p.name.isdigit())
  raise errors.GenerateError(f"--step={step}: the prior workdir {prior_workdir} has no checkpoint "
                             f"{step} (it has {', '.join(map(str, steps)) or 'none'})")


def _episode_names(dvae_workdir: str, prior_workdir: str) -> list[str] | None:
  """The models' episode names (the prior's episodes.json, else the dVAE's), if any."""
  return episodes_lib.load(prior_workdir) or episodes_lib.load(dvae_workdir)


def main() -> None:
  cli.require("dvae_workdir", "prior_workdir", "audio", "output")
  _check_step(FLAGS.prior_workdir, FLAGS.step)
  models = generator.load_models(FLAGS.dvae_workdir, FLAGS.prior_workdir, step=FLAGS.step)
  names = _episode_names(FLAGS.dvae_workdir, FLAGS.prior_workdir)
  num_episodes = models.prior.num_episodes
  episode = controls.resolve_episode(FLAGS.episode, num_episodes, names)
  schedule = controls.numeric_schedule(FLAGS.episode_schedule, num_episodes, names)
  options, opening = cli.sampling_settings(FLAGS.prior_workdir)
  request = job.Request(FLAGS.audio, FLAGS.output, episode, schedule,
                        FLAGS.style, FLAGS.traverse_dim, options, FLAGS.seed, opening)
  result = job.generate(models, request, progress=True)
  height, width = models.frame_size
  print(f"Wrote {result['output']}: {result['frames']} frames of {width}x{height} (WxH), "
        f"{result['audio_seconds']:.2f} s of audio in {result['wall_seconds']:.2f} s (real-time "
        f"factor {result['rtf']:.3f}; {result['streams']} stream(s)).")

if __name__ == "__main__":
  cli.run(main, user_errors=(ValueError,))
