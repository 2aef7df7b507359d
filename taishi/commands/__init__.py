"""Command groups that live in their own modules.

Every module in this package is imported by :mod:`taishi.cli` after ``main`` is
defined; a module registers its commands with ``@main.command()`` or
``@main.group()`` (``from taishi.cli import main``), so a new command group
never has to edit ``cli.py``.
"""
