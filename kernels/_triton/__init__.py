"""What the fused Triton ops share: flash-attention building blocks (``flash.py``: row-tile loads
and stores, the online softmax step and its epilogue, the dq and dk/dv backward steps), the
autotune layer (``autotune.py``: one ``Space`` per kernel, the ``ATTNZOO_AUTOTUNE`` switch, the
shared-memory limit), the one launch helper (``launch.py``), the host-side refusal check
(``host.py``), the fallback to the reference (``fallback.py``) and ahead-of-time compilation for
named GPU targets without a GPU (``aot.py``: the compile gate behind ``attnzoo kernels`` and the
compile probe behind ``backend=None``'s fallback).

Imported only by the ops' ``triton.py`` / ``_autotune.py`` modules and by tools: importing
``attnzoo.kernels`` never imports triton.
"""
