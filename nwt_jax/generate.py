"""Speech in, talking-head video out.

    python -m nwt_jax.generate --dvae_workdir=runs/demo/dvae --prior_workdir=runs/demo/prior \\
        --audio=speech.wav --output=out.mp4 [--episode=3 | --episode_schedule=0:3,4.5:5] \\
        [--style=random | --style=reference:clip.mp4 | --style=z:0.1,-2,...] [--traverse_dim=K] \\
        [--temperature=1.0 --top_k=0 --top_p=1.0 --audio_guidance=1.0 --change_threshold=0 \\
         --opening=bank --seed=0]

The work is `nwt_jax.inference.job.generate`; bad input is one `error: ...` line, exit code 1 and
no output file.
"""

from absl import flags

from nwt_jax import cli
from nwt_jax.inference import generator
from nwt_jax.inference import job

FLAGS = flags.FLAGS
cli.define_workdir_flags()
flags.DEFINE_string("audio", None, "Input audio: any file ffmpeg reads (wav, mp3, m4a, a video).")
flags.DEFINE_string("output", None, "Output .mp4 (H.264 + the input audio as AAC).")
flags.DEFINE_integer("episode", 0, "Episode id for the whole video.")
flags.DEFINE_string("episode_schedule", "",
                    "Episode changes as SECONDS:EPISODE,... from 0, e.g. 0:3,4.5:5.")
flags.DEFINE_string("style", "random", "random | reference:CLIP.mp4 | z:V1,V2,... (style_dim).")
flags.DEFINE_integer("traverse_dim", -1,
                     "If >= 0: a grid video of that style dimension moved by -2..2 sigma.")
cli.define_sampling_flags()


def main() -> None:
  cli.require("dvae_workdir", "prior_workdir", "audio", "output")
  models = generator.load_models(FLAGS.dvae_workdir, FLAGS.prior_workdir)
  options, opening = cli.sampling_settings(FLAGS.prior_workdir)
  request = job.Request(FLAGS.audio, FLAGS.output, FLAGS.episode, FLAGS.episode_schedule,
                        FLAGS.style, FLAGS.traverse_dim, options, FLAGS.seed, opening)
  result = job.generate(models, request, progress=True)
  print(f"Wrote {result['output']}: {result['frames']} frames, {result['audio_seconds']:.2f} s "
        f"of audio in {result['wall_seconds']:.2f} s (real-time factor "
        f"{result['rtf']:.3f}; {result['streams']} stream(s)).")


if __name__ == "__main__":
  cli.run(main, user_errors=(ValueError,))
