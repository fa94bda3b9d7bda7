"""WeCLIP+ (TPAMI 2025, "Frozen CLIP-DINO") in clipes: WeCLIP with a frozen DINOv2 beside the frozen CLIP.

Built on WeCLIP's public pieces (:mod:`clipes.weclip`): the frozen tower, the GradCAM, the RFM's
block selection and CAA, PAR, the decoder blocks, the split CE and affinity losses, the schedule.
What WeCLIP+ adds lives here:

* :mod:`clipes.weclip_plus.decoder`: the two fusion heads (CLIP ``X_11``, DINO's last layer) and the
  one decoder they share; the affinity of the concatenated features.
* :mod:`clipes.weclip_plus.model`: one training / validation step (GradCAM on ``X_10``, RFM+ with
  the CAM re-weighted by the decoder's probability, PAR, the pseudo label and its late override),
  the losses (split CE, affinity, dice over every class, cross supervision between the branches),
  and the multi-scale + flip inference of both branches.
* :mod:`clipes.weclip_plus.schedule`, :mod:`~clipes.weclip_plus.options`, :mod:`~clipes.weclip_plus.data`,
  :mod:`~clipes.weclip_plus.checkpoint`, :mod:`~clipes.weclip_plus.runner`: the commands' pieces.

DINOv2 itself is a shared backbone (:mod:`clipes.backbones.dinov2`). Importable without mmseg; the
training loop runs through mmengine (:mod:`clipes.mmseg_ext.weclip_plus`). The exact behaviour
reproduced is ``shared/spec/weclipplus-algorithm.md``.
"""
