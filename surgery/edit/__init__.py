"""In-place edits: the plan -> commit engine and the operations built on it.

``replace``/``delete``/``insert``, ``replace_head``/``adapt_input`` and ``swap``
plan their edits as an :class:`~surgery.EditPlan` and commit it in one step.
Private: the public names are re-exported by :mod:`surgery`.
"""
