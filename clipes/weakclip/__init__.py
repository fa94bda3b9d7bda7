"""WeakCLIP (IJCV 2024) in clipes: a learnable-prompt CLIP refiner trained on existing pseudo masks.

The method's whole story, in this folder (pure PyTorch, no mmseg import) plus the registered
segmentor in :mod:`clipes.mmseg_ext.weakclip` (mmseg's own ``FPN`` neck and ``FPNHead`` decoder):

* :mod:`.classes`: the text classes (raw names, ``background`` included) and COCO's label spaces;
* :mod:`.encoders`: the CLIP image encoder with its f1..f4 taps, embeddings and the pyramid adapter,
  and the prompt-learning text encoder, both built from a CLIP that clipes' loader read;
* :mod:`.coattention`: the decoupled co-attention (reference layout, dead layers included);
* :mod:`.losses`: seed, CRF boundary and score-map losses, and the CRF target;
* :mod:`.schedule`: the warm-up x cosine learning rate with its absolute floor;
* :mod:`.inference`: the 12-view slide inference and the pseudo-mask CRF;
* :mod:`.checkpoint`: clipes and reference checkpoints, read with ``weights_only=True``;
* :mod:`.options`: the options of ``train-weakclip`` / ``masks-weakclip`` and the config paths;
* :mod:`.runner`: ``masks-weakclip`` as a library call.

See ``docs/weakclip.md``; the reference's behaviour is ``shared/spec/weakclip-algorithm.md``.
"""
