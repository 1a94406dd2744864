"""The media rates every stage agrees on: 30 fps video, 24 kHz mono audio, 4 log-mel rows a frame.

The models never see these (a prior takes mel rows in multiples of its `mel_per_frame`); the data
pipelines, the tokenizer, generation and the evaluation read them from here.
"""

FPS = 30  # video frames per second
SAMPLE_RATE = 24000  # audio samples per second (mono)
SAMPLES_PER_FRAME = SAMPLE_RATE // FPS  # 800
HOP_LENGTH = 200  # log-mel hop: 120 mel rows per second
MEL_PER_FRAME = SAMPLES_PER_FRAME // HOP_LENGTH  # 4 log-mel rows per video frame
N_MELS = 80  # log-mel bins
