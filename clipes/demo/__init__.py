"""The demo: a generated dataset, a small CLIP trained by clipes, and every method run on them.

* :mod:`clipes.demo.demo_data`: the six-class scenes in VOC layout, with exact masks;
* :mod:`clipes.demo.demo_clip`: the bundled demo CLIP's contrastive training (``make demo-model``);
* :mod:`clipes.demo.pipeline`: ``make demo``, every stage and method in order, and the summary table.
"""
