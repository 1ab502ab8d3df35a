"""Fixtures shared by the test modules."""

from __future__ import annotations

import pytest

import litedur


@pytest.fixture
def engines():
    """Make engines that are shut down when the test ends: ``engines(path, **options)``."""
    made: list[litedur.Engine] = []

    def make(path, **options) -> litedur.Engine:
        app = litedur.Engine(path, **options)
        made.append(app)
        return app

    yield make
    for app in made:
        app.shutdown(timeout=10)
