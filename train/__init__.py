"""Classification training on timm's components: ``attnzoo train`` / ``attnzoo validate``.

* ``attnzoo.train.trainer`` — the loop, checkpointing and torchrun glue (``python -m attnzoo.train``)
* ``attnzoo.train.validate`` — top-1 / top-5 / loss / images/s of saved weights
* ``attnzoo.train.config`` — arguments (timm's names), ``--config`` YAML, ``--recipe`` files (``recipes/``)
* ``attnzoo.train.demo`` — offline demo data (scikit-learn's digits as an image folder)
* ``attnzoo.train.bench`` — train-step throughput and peak memory, ours vs timm's twin

Nothing heavy is imported here: the command line imports the submodules it runs.
"""
