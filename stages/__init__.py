"""Thin command-line entry points over the ``clipes`` library, one module per stage."""
