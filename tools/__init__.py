"""The ``attnzoo`` command line (``attnzoo.tools.cli``): ``attnzoo bench`` now; ``bench-ops``,
``train``, ``convert`` later. ``attnzoo.tools.flops`` counts model FLOPs the way papers do."""
