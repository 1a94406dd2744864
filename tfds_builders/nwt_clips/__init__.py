"""The nwt_clips TFDS builder (`tfds build tfds_builders/nwt_clips`)."""
