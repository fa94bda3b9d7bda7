"""Maps: the map arithmetic every method shares.

* :mod:`clipes.maps.gradcam`: softmax-GradCAM of the last block, closed-form or autograd weights.
* :mod:`clipes.maps.caa`: class-aware attention affinity (Sinkhorn, boxes, propagation on the grid).
* :mod:`clipes.maps.crf`: the dense CRF and the pseudo-mask confidence rule.
* :mod:`clipes.maps.par`: pixel-adaptive refinement (PAR) of label scores.
"""
