"""Device mesh and logical-axis rules (t5x style: a short vocabulary, one rule each).

Parameters name their dimensions with the logical names below (`nn.with_logical_partitioning`
in `models/layers.py`); activations get `nn.with_logical_constraint` at block boundaries. The rules
map each logical name to mesh axes of the (`data`, `fsdp`, `model`) mesh.
"""

MESH_AXES = ("data", "fsdp", "model")

LOGICAL_AXIS_RULES = (
    ("batch", ("data", "fsdp")),  # examples (activations and batches) over data and fsdp
    ("embed", "fsdp"),  # a parameter's model-width dim: ZeRO-3 style over fsdp
    ("mlp", "model"),  # hidden widths (MLP, conv output channels): tensor parallel
    ("heads", "model"),  # attention / Memcodes heads
    ("vocab", "model"),  # code vocabulary (Memcodes codes, prior logits)
    ("kv", None),  # per-head feature dim
    ("length", None),  # sequence, time, and spatial activation dims
    ("norm", None),  # norm scales/biases and other small vectors: replicated
)
