"""Private kernels of bigsoftmax (not public API): one file per role."""
