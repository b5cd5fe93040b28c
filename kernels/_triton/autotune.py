"""The one autotune layer of the fused ops: a ``Space`` per kernel, the switch that turns tuning
off, and the shared-memory limit that pruning fits configs into.

An op's ``_autotune.py`` describes each of its kernels as a ``Space``: the configs (the search
space, preferred first), a pruning rule ``prune(kernel, configs, args)`` that is told which
kernel it serves by its first argument (so one rule can serve an op's forward and backward
kernels without guessing from argument names), the untuned choice among the survivors, the
interpreter's fixed tile and the autotune key. ``launch.launch`` takes the space and does the
rest: the default config, or the tuner for large problems, or the ahead-of-time compile.

Switch: ``ATTNZOO_AUTOTUNE=0`` makes every launch take its untuned default config (tests and
quick runs, where tuning each new pattern, one compile per config, dominates). An op's own
variable (``ATTNZOO_GNA_AUTOTUNE``, ``ATTNZOO_ROUTED_AUTOTUNE``, ``ATTNZOO_HALO_AUTOTUNE``,
``ATTNZOO_AGGREGATED_AUTOTUNE``), when set, overrides it for that op. Problems of fewer than
``TUNE_MIN_ROWS`` rows (batch * heads * positions) are never tuned: they are launch-bound, and
tuning would cost more than it could save.
"""
from __future__ import annotations

import functools
import os
from typing import Any, Callable, Dict, List, Optional, Sequence

import triton

from . import aot

__all__ = ["ENV", "TUNE_MIN_ROWS", "DEFAULT_SMEM_BYTES", "Space", "autotune_enabled", "smem_limit", "pow2",
           "dot_bytes", "config_dict"]

ENV = "ATTNZOO_AUTOTUNE"
TUNE_MIN_ROWS = 2**18
DEFAULT_SMEM_BYTES = aot.TARGETS["sm_80"].smem_per_block
"""The shared memory pruning assumes with no CUDA device and no compile session (CPU tests, the
interpreter): the smallest of the compile gate's targets, an A100's 163 KiB."""


def autotune_enabled(override: Optional[str] = None) -> bool:
    """Whether launches may go through the autotuner: ``override`` (an op's own variable) when it
    is set, else ``ATTNZOO_AUTOTUNE``; '0' turns tuning off, anything else (or unset) on."""
    for name in (override, ENV):
        value = os.environ.get(name, "").strip() if name else ""
        if value:
            return value != "0"
    return True


@functools.lru_cache(maxsize=None)
def _device_smem(index: int) -> int:
    import torch

    props = torch.cuda.get_device_properties(index)
    return getattr(props, "shared_memory_per_block_optin", None) or DEFAULT_SMEM_BYTES


def smem_limit() -> int:
    """Bytes of shared memory one program may use, for pruning: the compile session's target's
    (``aot.TARGETS``: sm_80 163 KiB, sm_90 / sm_100 227 KiB) while compiling ahead of time, the
    current CUDA device's opt-in limit when there is one, else ``DEFAULT_SMEM_BYTES``."""
    session = aot.current_session()
    if session is not None:
        return session.target.smem_per_block
    import torch

    if torch.cuda.is_available():
        return _device_smem(torch.cuda.current_device())
    return DEFAULT_SMEM_BYTES


def pow2(n: int) -> int:
    """``n`` rounded up to a power of two, at least 16 (``tl.dot`` needs 16 rows / columns)."""
    return max(16, triton.next_power_of_2(n))


def dot_bytes(args: dict) -> int:
    """Bytes per element of the tiles fed to ``tl.dot``: 4 for float32 (IEEE), 2 otherwise."""
    return 4 if args["DOT_PRECISION"] == "ieee" else 2


def config_dict(config: triton.Config) -> dict:
    """A config as the launch helper takes it: meta-parameters plus ``num_warps`` / ``num_stages``."""
    return dict(config.kwargs, num_warps=config.num_warps, num_stages=config.num_stages)


Prune = Callable[[str, Sequence[triton.Config], Dict[str, Any]], List[triton.Config]]
Choose = Callable[[str, List[triton.Config], Dict[str, Any]], triton.Config]


class Space:
    """The autotune space of one kernel of one op.

    * ``kernel``: the kernel's name in its op ('fwd', 'dq', ...), given to ``prune``;
    * ``configs``: the search space, preferred first;
    * ``prune(kernel, configs, args)``: the survivors for a launch's arguments (never empty);
    * ``choose(kernel, kept, args)``: the untuned choice among them (default: the first);
    * ``interpreter(args)``: the fixed config under Triton's interpreter (no timing possible;
      an op whose launch arguments do not determine it passes that config to the launch itself);
    * ``key``: the launch arguments the best config depends on (Triton appends tensor dtypes;
      names the kernel does not take are skipped);
    * ``reset_to_zero``: buffers the kernel accumulates into with atomics (zeroed before each
      timed run);
    * ``env``: the op's own autotune variable, which overrides ``ATTNZOO_AUTOTUNE``.
    """

    def __init__(self, kernel: str, configs: Sequence[triton.Config], prune: Prune, key: Sequence[str],
                 interpreter: Optional[Callable[[dict], dict]] = None, choose: Optional[Choose] = None,
                 reset_to_zero: Optional[Sequence[str]] = None, env: Optional[str] = None):
        self.kernel = kernel
        self.configs = tuple(configs)
        self._prune = prune
        self._choose = choose
        self._interpreter = interpreter
        self.key = list(key)
        self.reset_to_zero = list(reset_to_zero) if reset_to_zero else None
        self.env = env
        self._tuners: Dict[Any, Any] = {}

    def __repr__(self) -> str:
        return f"Space({self.kernel!r}, {len(self.configs)} configs, env={self.env!r})"

    def prune(self, configs: Sequence[triton.Config], named_args: dict, **kwargs) -> List[triton.Config]:
        """Triton's ``early_config_prune``: the configs among ``configs`` that survive for this
        launch (its positional arguments by name, then its keyword arguments)."""
        return self._prune(self.kernel, configs, {**named_args, **kwargs})

    def kept(self, args: dict) -> List[triton.Config]:
        """The whole space pruned for ``args`` (the launch's keyword arguments)."""
        return self.prune(self.configs, {}, **args)

    def default_config(self, args: dict) -> dict:
        """The untuned choice for ``args``."""
        kept = self.kept(args)
        return config_dict(self._choose(self.kernel, kept, args) if self._choose is not None else kept[0])

    def interpreter_config(self, args: dict) -> dict:
        if self._interpreter is None:
            raise ValueError(f"{self!r} has no interpreter config: the launch must pass one")
        return self._interpreter(args)

    def should_tune(self, rows: int) -> bool:
        """Whether a launch over ``rows`` = batch * heads * positions goes through the tuner."""
        return autotune_enabled(self.env) and rows >= TUNE_MIN_ROWS

    def tuner(self, kernel):
        """The ``triton.autotune`` wrapper of ``kernel`` over this space, built once."""
        tuner = self._tuners.get(kernel)
        if tuner is None:
            tuner = self._tuners[kernel] = triton.autotune(
                configs=list(self.configs), key=self.key, prune_configs_by={"early_config_prune": self.prune},
                reset_to_zero=self.reset_to_zero)(kernel)
        return tuner
