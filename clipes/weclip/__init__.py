"""WeCLIP (CVPR 2024) in clipes: a frozen CLIP, a trainable decoder, online RFM pseudo labels.

The whole method lives in this package, on top of clipes' shared rooms (CLIP loading, the
softmax-GradCAM of :mod:`clipes.maps.gradcam`, CAA of :mod:`clipes.maps.caa`, PAR of :mod:`clipes.maps.par`):

* :mod:`clipes.weclip.tower`: the frozen image tower run once per batch for blocks 1..L-1, with
  the reference's attention (fp32 softmax, fp16 out-projection) and per-block attention maps.
* :mod:`clipes.weclip.decoder`: fusion head + transformer decoder, and the decoder affinity.
* :mod:`clipes.weclip.cam`: the initial CAM (softmax-GradCAM on the last block, all classes of an
  image from one pass) and the last block's attention.
* :mod:`clipes.weclip.rfm`: the refinement module (early phase = CLIP-ES CAA, late phase = the
  decoder-guided, signed-sum block selection) and the online pseudo label.
* :mod:`clipes.weclip.losses`: segmentation and affinity losses, affinity labels.
* :mod:`clipes.weclip.schedule`: the warm-up + poly learning rate.
* :mod:`clipes.weclip.model`: one training / inference step tying them together.

Importable without mmseg; the training loop itself runs through mmengine (see
:mod:`clipes.mmseg_ext.weclip`). The exact behaviour reproduced is ``shared/spec/weclip-algorithm.md``.
"""
