"""The ``attnzoo`` command line: ``attnzoo bench`` and friends."""
