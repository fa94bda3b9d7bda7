"""Prompt data files for clipes (class lists, background lists, template pool); no code."""
