"""`fastivc demo`: plain TCP and fastivc side by side between two network
namespaces on one host, as a table and a PNG chart (see cli.py)."""

from .cli import add_parser

__all__ = ["add_parser"]
