"""Analysis and composition: meta copies, fx tracing, cut/split, compose, verify, tree.

Tracing and shape inference run on copies and never write into the caller's
model. Private: the public names are re-exported by :mod:`surgery`.
"""
