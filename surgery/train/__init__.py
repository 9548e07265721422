"""Training set-up: freezing and BatchNorm policies, layer/param groups, feature caches.

Private: the public names are re-exported by :mod:`surgery`.
"""
