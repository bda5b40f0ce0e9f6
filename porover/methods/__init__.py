"""One folder per method: its library code and its stage(s), beside the shared machinery.

Each folder holds what one method needs: pure functions (no files, no model), the stage module that runs
it (its parameters dataclass, ``NOTEBOOK``, ``OUTPUTS`` and run function) and, where the method's model folder
is more than weights, the `porover.models.ModelHandle` that opens it. Adding a method means one folder here,
its notebook under ``notebooks/`` and one line in `porover.run_file.STAGE_TYPES`. Methods import the shared
libraries (``porover.generation``, ``porover.judges``, ``porover.models``...); no shared module imports a method.
"""
