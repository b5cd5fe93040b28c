"""What the fused Triton ops share: flash-attention building blocks (``flash.py``: the online
softmax step and its epilogue), the one launch helper (``launch.py``), the fallback to the
reference (``fallback.py``) and ahead-of-time compilation for named GPU targets without a GPU
(``aot.py``: the compile gate behind ``attnzoo kernels`` and the compile probe behind
``backend=None``'s fallback).

Imported only by the ops' ``triton.py`` modules and by tools: importing ``attnzoo.kernels`` never
imports triton.
"""
