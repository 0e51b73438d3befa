"""Shared by the server tests: one embedded tiny model per test process (its compiled programs are reused
by every app built over it)."""

from __future__ import annotations

import pytest

import jdiff


@pytest.fixture(scope="session")
def tiny_gen():
    return jdiff.DiffGenerator.from_pretrained()
