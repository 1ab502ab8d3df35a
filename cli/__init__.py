"""The ``litedur`` command line: a thin click + rich layer over the library (installed as litedur.cli)."""

from .main import main

__all__ = ["main"]
