"""clipes' MMSegmentation plug-in: the only part of clipes that imports mmseg, mmengine or mmcv.

Configs load it with ``custom_imports = dict(imports=["clipes.mmseg_ext"], allow_failed_imports=False)``;
importing it registers, in mmseg's own registries:

* losses: ``ConfidenceCrossEntropyLoss`` (hard / soft, optional class balancing);
* heads: ``DeepLabV2Head`` and the confidence-aware ``ConfidenceASPPHead``,
  ``ConfidenceDepthwiseSeparableASPPHead``, ``ConfidenceFCNHead``;
* data: ``PseudoMaskDataset``, ``LoadConfidence``, ``PackSegInputsWithConfidence``;
* hooks: ``PlainCheckpointHook`` (checkpoints that load with ``weights_only=True``),
  ``RelativePointerHook`` (portable ``last_checkpoint``), ``MethodMetaHook``, ``ProgressHook``;
* resumable training (:mod:`clipes.mmseg_ext.resume`): ``KeyedDataset``, ``KeyedInfiniteSampler``,
  ``ResumableIterLoop``, ``IterationSeedHook``.
"""

from clipes.mmseg_ext.compat import prepare

prepare()

from mmseg.registry import MODELS  # noqa: E402

from clipes.mmseg_ext import data, excel, heads, hooks, losses, resume, weakclip, weclip, weclip_plus  # noqa: E402,F401

MODELS.register_module(module=losses.ConfidenceCrossEntropyLoss)
