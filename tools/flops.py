"""FLOPs of a model's forward, with attention ops counted by their math.

``FlopCounterMode`` alone counts what each implementation executes; for attnzoo's attention
ops that depends on the backend (the reference computes masked key tiles). Here every attnzoo
op call is counted by its definition instead (``attnzoo.kernels.count_op_flops``), so the
figure is the same whichever backend ran and comparable with the papers'.
"""
from __future__ import annotations

from typing import Sequence, Union

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from attnzoo.kernels import count_op_flops

__all__ = ["count_flops", "gflops_macs"]


def count_flops(model: nn.Module, x: torch.Tensor) -> int:
    """FLOPs (2 per multiply-add) of ``model(x)``, attnzoo ops counted by their math.

    Runs one forward in the caller's grad mode. An op's own ``FlopCounterMode`` (in
    ``attnzoo.kernels._flops.run_counted``) passes its aten calls on to the outer counter, so the
    outer total holds each op's executed FLOPs once; they are swapped for the math FLOPs.
    """
    with FlopCounterMode(display=False) as counter, count_op_flops() as records:
        model(x)
    executed = sum(r.executed for r in records)
    math = sum(r.math for r in records)
    return int(counter.get_total_flops()) - executed + math


def gflops_macs(model: nn.Module, img_size: Union[int, Sequence[int]], in_chans: int = 3) -> float:
    """GFLOPs as papers count them (multiply-adds / 1e9) of one batch-1 image, eval mode."""
    h, w = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None else torch.float32
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            flops = count_flops(model, torch.zeros(1, in_chans, h, w, device=device, dtype=dtype))
    finally:
        model.train(was_training)
    return flops / 2 / 1e9
