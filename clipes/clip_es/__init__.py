"""CLIP-ES (CVPR 2023) in clipes: softmax-GradCAM + CAA + CRF pseudo masks.

* :mod:`clipes.clip_es.cam_runner`: stage 1, ``cams`` (GradCAMs of every labelled class, optional attention cache);
* :mod:`clipes.clip_es.refine_runner`: stage 2, ``refine`` (CAA on the patch grid, CRF, masks and confidence);
* :mod:`clipes.clip_es.prompt_select`: ``select-prompts`` (template ranking by sharpness and AP).

Stage 3 (a DeepLab trained on the masks) is mmseg's, in :mod:`clipes.mmseg_ext.runner`. The exact
behaviour reproduced is ``shared/spec/clip-es-algorithm.md``.
"""
