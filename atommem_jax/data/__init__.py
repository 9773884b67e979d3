"""Data: metrics, raw readers, long-context construction, chunker, synthetic tasks, tfds builders.

Submodules are imported explicitly (`from atommem_jax.data import metrics`) so that importing
the metrics never pulls in tensorflow-datasets.
"""
