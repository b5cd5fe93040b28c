"""Functional attention ops. Each op has a pure-PyTorch reference and, where written, fused
Triton kernels, chosen per call by the rule in ``_dispatch.py``.

| op  | folder      | used by                                          |
|-----|-------------|--------------------------------------------------|
| gna | ``gna/``    | NAT / DiNAT (more families as they land)         |
"""
from ._dispatch import BACKENDS, BackendUnavailableError, default_backend
from ._flops import OpFlops, count_op_flops
from .gna import gna, gna_reference

__all__ = [
    "BACKENDS", "BackendUnavailableError", "default_backend",
    "OpFlops", "count_op_flops",
    "gna", "gna_reference",
]
