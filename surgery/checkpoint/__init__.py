"""Checkpoints: sources by format, key filters and renames, the load plan and commit, saves.

Private: the public names are re-exported by :mod:`surgery`.
"""
