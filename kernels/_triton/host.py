"""Host-side checks and set-up every fused op's ``triton.py`` shares.

The dispatcher (``_dispatch.Op.register_triton``) has already checked the device (CUDA, or the
CPU under Triton's interpreter, where bfloat16 is refused); ``refusal`` checks what every fused
kernel needs of its inputs on top of that, and an op's ``can_run_triton`` adds only its own
limits (window sizes, int32 offsets). Contiguity is not refused: the host code runs the kernels
on ``contiguous`` copies (a no-op for contiguous tensors), so strided inputs such as the slices
of a packed qkv run as they are.
"""
from __future__ import annotations

import os
from typing import Iterable, Optional, Tuple

import torch

__all__ = ["INTERPRETER", "DTYPES", "GRID_AXIS", "head_dim_ok", "refusal", "contiguous"]

INTERPRETER = os.environ.get("TRITON_INTERPRET", "") == "1"
"""Whether the kernels are built for Triton's CPU interpreter: TRITON_INTERPRET=1 in the
environment when this module was first imported, which precedes the kernels' decoration
(Triton decides there). The reverse mix cannot run: triton imported under the interpreter (its
library functions are interpreted) but kernels built for compilation."""

DTYPES = (torch.float16, torch.bfloat16, torch.float32)
GRID_AXIS = 65535
"""Programs along the second and third axes of a CUDA grid (the kernels put batch or batch *
heads there)."""


def head_dim_ok(d: int) -> bool:
    """A head (or value) dim the kernels take: a multiple of 8 in [16, 128] (``tl.dot`` tiles of
    at least 16, rounded up to a power of two; 128 keeps the tiles in registers)."""
    return 16 <= d <= 128 and d % 8 == 0


def refusal(tensors: Iterable[Tuple[str, Optional[torch.Tensor]]], dims: Iterable[Tuple[str, int]],
            programs: Iterable[Tuple[str, int]] = ()) -> Optional[str]:
    """None when these inputs are ones every fused kernel takes, else the sentence saying why not:
    each named tensor (None: absent) in float16, bfloat16 or float32; each named head dim
    ``head_dim_ok``; each named program count within one grid axis."""
    for name, t in tensors:
        if t is not None and t.dtype not in DTYPES:
            return f"{name} dtype {t.dtype} is not supported (float16, bfloat16 or float32)"
    for name, d in dims:
        if not head_dim_ok(d):
            return f"{name} {d} is not supported (a multiple of 8 in [16, 128])"
    for name, n in programs:
        if n > GRID_AXIS:
            return f"{name} = {n} exceeds the {GRID_AXIS} programs of a grid axis"
    return None


def contiguous(*tensors: Optional[torch.Tensor]) -> Tuple[Optional[torch.Tensor], ...]:
    """The tensors as the kernels address them (row-major, dense); None stays None."""
    return tuple(None if t is None else t.contiguous() for t in tensors)
