"""Progress bars that are widgets in JupyterLab and stay readable as plain lines in papermill logs."""

from __future__ import annotations

import os
import sys

# Set by `porover run` for the kernels it starts: their output goes to a log, not a browser.
PLAIN_ENV = "POROVER_PLAIN_PROGRESS"


def progress(iterable=None, **kwargs):
    """``tqdm.auto.tqdm`` interactively; under ``porover run`` an ASCII bar updated every 10 s at most.

    Args:
        iterable: What to iterate over, as for tqdm.
        **kwargs: Passed to tqdm (``total``, ``desc``, ``unit`` ...).
    """
    if os.environ.get(PLAIN_ENV):
        from tqdm.std import tqdm

        kwargs = {"mininterval": 10.0, "ascii": True, "file": sys.stderr, "dynamic_ncols": False, **kwargs}
        return tqdm(iterable, **kwargs)
    from tqdm.auto import tqdm

    return tqdm(iterable, **kwargs)
