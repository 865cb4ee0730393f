"""The tests' host-sync counter is the library's (``bigsoftmax.diagnostics``), counting the paths as they
run: ``tests/test_host_sync.py`` chooses the paths itself with ``force_sync_free``."""

from bigsoftmax.diagnostics import count_host_syncs as _count


def count_host_syncs():
    return _count(sync_free=None)
