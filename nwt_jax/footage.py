"""From a folder of your videos to a trained talking head and a report, in one command.

    python -m nwt_jax.footage --videos=$HOME/videos --workdir=runs/mine \\
        [--preset=tiny|base|paper] [--crop=face|center] [--dvae_steps=N --prior_steps=N] \\
        [--dvae_config=data.batch_size=8 --prior_config=FIELD=VALUE ...] [sampling flags]

`--videos` holds one folder per episode (`alice/*.mp4`, `bob/*.mov`, ...). The videos are checked
first (nothing is written on a refusal), then the dataset is built, both models trained, a held-out
clip's audio turned into video and WORKDIR/report/report.html written (`nwt_jax.evaluation.footage`;
docs/footage.md). A rerun resumes: finished stages are kept.
"""

from absl import flags

from nwt_jax import cli
from nwt_jax.evaluation import footage

FLAGS = flags.FLAGS
_DEFAULTS = footage.Settings(videos="")
flags.DEFINE_string("videos", None, "Folder of videos: <videos>/<episode name>/<video files>.")
flags.DEFINE_string("workdir", _DEFAULTS.workdir,
                    "Where the dataset, both runs, the generated video and the report go.")
flags.DEFINE_enum("preset", None, list(footage.PRESETS),
                  "Model size and frame size (tiny 64x56, base 128x112, paper 256x224); default: "
                  "tiny on a CPU, base on an accelerator.")
flags.DEFINE_enum("crop", _DEFAULTS.crop, list(footage.CROPS),
                  "face: crops centred on the detected face; center: a plain centre crop.")
flags.DEFINE_integer("num_frames", _DEFAULTS.num_frames, "Frames per clip (30 fps).")
flags.DEFINE_integer("dvae_steps", 0, "dVAE training steps (0: the preset's).")
flags.DEFINE_integer("prior_steps", 0, "Prior training steps (0: the preset's).")
flags.DEFINE_integer("eval_clips", _DEFAULTS.eval_clips, "Held-out clips the report measures.")
flags.DEFINE_multi_string("dvae_config", [], "A dVAE config field as FIELD=VALUE (repeatable), "
                          "e.g. --dvae_config=data.batch_size=8.")
flags.DEFINE_multi_string("prior_config", [], "A prior config field as FIELD=VALUE (repeatable).")
flags.DEFINE_string("episode", "", "The generate stage's episode, by name or id (default: the "
                    "held-out clip's).")
_OPTIONS = _DEFAULTS.options
cli.define_sampling_flags(temperature=_OPTIONS.temperature)


def main() -> None:
  cli.require("videos")
  options, opening = cli.sampling_settings()
  footage.run(footage.Settings(
      videos=FLAGS.videos, workdir=FLAGS.workdir, preset=FLAGS.preset or "", crop=FLAGS.crop,
      num_frames=FLAGS.num_frames, dvae_steps=FLAGS.dvae_steps, prior_steps=FLAGS.prior_steps,
      eval_clips=FLAGS.eval_clips, dvae_overrides=tuple(FLAGS.dvae_config),
      prior_overrides=tuple(FLAGS.prior_config), episode=FLAGS.episode, options=options,
      opening=opening, seed=FLAGS.seed))


if __name__ == "__main__":
  cli.run(main)
