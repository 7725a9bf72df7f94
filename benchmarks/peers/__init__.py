"""Peer implementations (HF transformers, mamba_ssm) wrapped as longseq mixers, for timing side by side.

Importing this package, or any module in it except ``register``, registers nothing: the contract suite iterates
over the registry and must not see the peers. ``register.py`` registers them, and is imported only on request:
``longseq bench speed --import benchmarks/peers/register.py``. See README.md.
"""
