"""ExCEL (CVPR 2025, "Exploring CLIP's Dense Knowledge for WSSS") in clipes.

Training-free patch-text CAMs of a frozen CLIP (one forward, no backward), with class texts enriched
by an attribute bank, and a decoder trained on their refined pseudo labels. Built on the shared rooms
and on WeCLIP's public pieces (fusion head and decoder blocks, the RFM's block selection and CAA,
PAR, the affinity labels and loss, the schedule); what ExCEL adds lives here:

* :mod:`clipes.excel.surgery`: the CLIP-Surgery forward of the last five blocks (static visual
  calibration), the in-place decoder inputs, the LVC map and the patch-text feature surgery (CAM).
* :mod:`clipes.excel.attributes`: the attribute bank (read, or clustered from descriptors) and the
  text semantic enrichment.
* :mod:`clipes.excel.decoder`: WeCLIP's decoder over all twelve blocks, fp32, and the batch-centred A_f.
* :mod:`clipes.excel.model`: one training step (static / dynamic CAM, refinement, PAR with the
  truncated guide, losses) and the inference (multi-scale logits, training-free and trained labels).
* :mod:`clipes.excel.losses`, :mod:`~clipes.excel.schedule`, :mod:`~clipes.excel.data`,
  :mod:`~clipes.excel.options`, :mod:`~clipes.excel.checkpoint`, :mod:`~clipes.excel.runner`:
  the commands' pieces.

Importable without mmseg; the training loop runs through mmengine (:mod:`clipes.mmseg_ext.excel`).
The exact behaviour reproduced is ``shared/spec/excel-algorithm.md``.
"""
