"""The language-model job: corpora and vocabularies (:mod:`.data`), LSTM/Transformer LMs (:mod:`.models`),
the head registry (:mod:`.registry`), training with atomic resumable checkpoints (:mod:`.train`), exact
evaluation (:mod:`.eval`), the like-for-like benchmark of every head (:mod:`.bench`) and the CLI (:mod:`.cli`).

It uses only the public API of the library core (``bigsoftmax.heads``, ``samplers``, ``optim``) and the
job plumbing in :mod:`bigsoftmax._jobs`; the library never imports it.
"""
