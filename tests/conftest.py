"""Shared fixtures: the real embedded model, loaded once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def tiny_model():
    """The embedded SmolLM2-135M-Instruct and its tokenizer, on CPU in fp32."""
    from porover.models import load_model

    return load_model("smollm2-135m-instruct", device="cpu")
