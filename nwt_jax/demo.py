"""The main job on the built-in synthetic world: `make demo` runs `python -m nwt_jax.demo`.

    python -m nwt_jax.demo --workdir=runs/demo [--prior_preset=tiny,mar] [sampling flags]

It chains the commands a user runs (README), each as its own process, then measures the result
and writes WORKDIR/report/report.html (`nwt_jax.evaluation.demo`). A rerun resumes: finished
training runs and tokens are kept, the rest is redone.
"""

from absl import flags

from nwt_jax import cli
from nwt_jax.evaluation import demo

FLAGS = flags.FLAGS
_DEFAULTS = demo.Settings()
flags.DEFINE_string("workdir", _DEFAULTS.workdir, "Where the dataset, runs and report go.")
flags.DEFINE_integer("num_train_clips", _DEFAULTS.num_train_clips,
                     "Synthetic clips in the train split.")
flags.DEFINE_integer("num_validation_clips", _DEFAULTS.num_validation_clips,
                     "Synthetic clips in the validation split.")
flags.DEFINE_integer("num_frames", _DEFAULTS.num_frames, "Frames per clip (30 fps).")
flags.DEFINE_integer("dvae_steps", _DEFAULTS.dvae_steps, "dVAE training steps.")
flags.DEFINE_integer("prior_steps", _DEFAULTS.prior_steps, "Prior training steps.")
flags.DEFINE_string("prior_preset", _DEFAULTS.prior_preset, "configs/prior.py preset.")
flags.DEFINE_integer("eval_clips", _DEFAULTS.eval_clips, "Held-out clips the evaluation generates.")
flags.DEFINE_integer("eval_frames", _DEFAULTS.eval_frames, "Frames per held-out clip.")
flags.DEFINE_integer("traverse_dims", _DEFAULTS.traverse_dims,
                     "Style dimensions the evaluation traverses (0: all).")
flags.DEFINE_integer("generate_frames", _DEFAULTS.generate_frames,
                     "Frames of held-out audio the generate stage turns into generated.mp4.")
_OPTIONS = _DEFAULTS.options
cli.define_sampling_flags(temperature=_OPTIONS.temperature, top_k=_OPTIONS.top_k,
                          top_p=_OPTIONS.top_p, audio_guidance=_OPTIONS.audio_guidance,
                          change_threshold=_OPTIONS.change_threshold)


def main() -> None:
  options, opening = cli.sampling_settings()
  options = demo.options_for(FLAGS.prior_preset, options,
                             threshold_given=FLAGS["change_threshold"].present)
  demo.run(demo.Settings(
      workdir=FLAGS.workdir, num_train_clips=FLAGS.num_train_clips,
      num_validation_clips=FLAGS.num_validation_clips, num_frames=FLAGS.num_frames,
      dvae_steps=FLAGS.dvae_steps, prior_steps=FLAGS.prior_steps,
      prior_preset=FLAGS.prior_preset, eval_clips=FLAGS.eval_clips,
      eval_frames=FLAGS.eval_frames, traverse_dims=FLAGS.traverse_dims,
      generate_frames=FLAGS.generate_frames, options=options,
      opening=opening, seed=FLAGS.seed))


if __name__ == "__main__":
  cli.run(main)
