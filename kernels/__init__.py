"""Functional attention ops. Each op has a pure-PyTorch reference and, where written, fused
Triton kernels, chosen per call by the rule in ``_dispatch.py``.

| op                | folder                 | used by                                        |
|-------------------|------------------------|------------------------------------------------|
| gna               | ``gna/``               | NAT / DiNAT, MaxViT block + grid, DaViT window |
| channel_attention | ``channel_attention/`` | DaViT channel blocks                           |
| halo_attention    | ``halo_attention/``    | HaloNet                                        |
| dense             | ``dense/``             | SHViT single-head attention                    |
| routed_attention  | ``routed_attention/``  | BiFormer bi-level routing attention            |
| aggregated_attention | ``aggregated_attention/`` | TransNeXt (stages 1-3; ``length_scaled_attention`` stage 4) |

Each folder holds ``_params.py`` (input checks), ``reference.py`` (the specification) and
``__init__.py`` (the public function and its ``<folder>_op`` dispatcher).
"""
from ._dispatch import BACKENDS, BackendUnavailableError, default_backend
from ._flops import OpFlops, count_op_flops
from .channel_attention import channel_attention, channel_attention_reference
from .dense import dense_attention, dense_reference
from .gna import gna, gna_reference
from .halo_attention import halo_attention, halo_attention_reference
from .routed_attention import route_regions, routed_attention, routed_attention_reference
from .aggregated_attention import aggregated_attention, aggregated_attention_reference, length_scaled_attention
from .aggregated_attention import aggregated_attention_op
from .channel_attention import channel_attention_op
from .dense import dense_op
from .gna import gna_op
from .halo_attention import halo_attention_op
from .routed_attention import routed_attention_op

OPS = {op.name: op for op in (gna_op, channel_attention_op, halo_attention_op, dense_op, routed_attention_op,
                              aggregated_attention_op)}
"""Every op by name: the dispatcher of each (``_dispatch.Op``). The compile gate, selftest and
bench walk this table."""

__all__ = [
    "BACKENDS", "BackendUnavailableError", "default_backend", "OPS",
    "OpFlops", "count_op_flops",
    "gna", "gna_reference",
    "channel_attention", "channel_attention_reference",
    "halo_attention", "halo_attention_reference",
    "dense_attention", "dense_reference",
    "routed_attention", "routed_attention_reference", "route_regions",
    "aggregated_attention", "aggregated_attention_reference", "length_scaled_attention",
]
