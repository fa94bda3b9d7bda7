"""Store: one owner per on-disk format, and the safe file writes they all use.

* :mod:`clipes.store.camstore` (``cams/``, ``refined/`` npz), :mod:`clipes.store.maskstore` (label PNGs),
  :mod:`clipes.store.attncache` (``attention/`` npz), :mod:`clipes.store.interop` (the reference's npy);
* :mod:`clipes.store.manifest`: every stage folder's ``manifest.json`` (identity, runs, failures);
* :mod:`clipes.store.checkpoints`: ``weights_only`` checkpoint reads;
* :mod:`clipes.store.fsutil`: atomic writes, the background writer, folder locks, file hashes;
* :mod:`clipes.store.halfcast`: exact float16 casts.
"""
