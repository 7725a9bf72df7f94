"""longseq: sub-quadratic token mixers behind one PyTorch interface."""

__version__ = "0.1.0"
