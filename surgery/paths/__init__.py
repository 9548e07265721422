"""Paths: the grammar (``_grammar``) and resolving paths against a model (``_resolve``).

Knows nothing about editing, tracing or checkpoints; every other subpackage
builds on it. Private: the public names are re-exported by :mod:`surgery`.
"""
