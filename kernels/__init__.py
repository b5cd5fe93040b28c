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

Adding an op: the contract of an op folder
-------------------------------------------

Every op is one folder ``kernels/<op>/`` and one entry in ``OPS`` below (plus the import of its
public function and ``__all__``). ``tests/kernels/test_op_contract.py`` walks ``OPS`` and checks
all of this, so an op that forgets a piece fails a test.

Every op:

* ``_params.py`` - the pattern (sizes, kernel, stride, ...) and its input checks, shared by every
  backend.
* ``reference.py`` - the specification: pure PyTorch, differentiable, vectorised, float32
  accumulation; ``<op>_reference``.
* ``__init__.py`` - ``<op>_op = Op("<op>", reference)`` (``_dispatch.Op``, the dispatcher) and the
  public function, which validates its inputs with ``_params`` and calls
  ``<op>_op.select(backend, ...)``; it takes ``backend=None``.

An op with fused Triton kernels adds (imports run one way: ``_library`` -> ``triton`` ->
``_autotune`` / ``_params``; the package imports without triton):

* ``triton.py`` - the ``@triton.jit`` kernels, built from the shared blocks of
  ``_triton.flash`` (row-tile loads and stores, ``softmax_step`` / ``softmax_epilogue``,
  ``dq_step``, ``dkdv_step``) around the op's own row mapping, masks and bias terms, and their
  host code, which launches through ``_triton.launch.launch`` with the kernel's autotune space
  (so the compile gate compiles the launch code itself), and

  - ``can_run_triton(*args)``: None, or the sentence saying why these inputs cannot run,
    taking the dispatcher's arguments (what ``Op.select`` receives after the public function's
    checks): ``_triton.host.refusal`` (dtype, head dim, grid-axis limit), then the op's own
    limits (window sizes, int32 offsets);
  - ``step_launches(*args, backward=True)``: every launch of one training step for those
    arguments (the compile gate and the compile probe call it on meta tensors);
  - ``INTERPRETER``: whether the kernels were built for Triton's interpreter (TRITON_INTERPRET=1
    before the process imported triton; ``_triton.host.INTERPRETER``).
* ``_autotune.py`` - ``SPACES``: one ``_triton.autotune.Space`` per kernel, holding its tile
  configs, their pruning (told which kernel it serves by argument; shared memory from
  ``_triton.autotune.smem_limit``), the untuned default, the interpreter's fixed tile and the
  autotune key; tuning follows ``ATTNZOO_AUTOTUNE`` and, when set, the op's own
  ``ATTNZOO_<OP>_AUTOTUNE``.
* ``_library.py`` - the ``torch.library`` custom ops (forward and backward, fake implementations,
  autograd), whose bodies run the kernels through ``_triton.fallback.run_or_fall_back``, and the
  entry ``<op>_triton(*args, fallback=False)`` the dispatcher calls.
* in ``__init__.py``: ``<op>_op.register_triton(kernels, entry, bench=...)``, ``kernels`` and
  ``entry`` being functions that import ``triton`` and the entry of ``_library`` (lazily), ``bench``
  the module path of its ``attnzoo bench-ops`` case module (``tools/bench_ops_<op>.py``, the
  interface that ``tools/bench_ops.py`` describes).

Outside the folder a fused op adds that case module and its tests: ``tests/kernels/test_<op>.py``
(reference) and ``tests/kernels/test_<op>_triton.py`` (``pytestmark = pytest.mark.interpreter``:
run in a process started with TRITON_INTERPRET=1; tests/conftest.py). The compile gate
(``attnzoo kernels``), ``attnzoo selftest`` and ``attnzoo bench-ops`` find it through ``OPS``.
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
