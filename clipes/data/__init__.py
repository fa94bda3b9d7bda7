"""Data: datasets, labels, images, prompts and scores, as every method reads them.

* :mod:`clipes.data.datasets`: split files, VOC / COCO / custom layouts, image-level labels, ground truth;
* :mod:`clipes.data.segdata`: the training-set checks and a stage folder's recorded dataset;
* :mod:`clipes.data.images`: decoding (with the mode notes) and CLIP's input tensor;
* :mod:`clipes.data.prompts`: class, background and template lists;
* :mod:`clipes.data.evaluation`: confusion matrices and mIoU;
* :mod:`clipes.data.prepare_voc`, :mod:`clipes.data.prepare_coco`: turn the published trees into clipes' layout.
"""
