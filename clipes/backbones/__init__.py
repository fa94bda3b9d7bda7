"""Backbones: the frozen foundation models every method stands on.

* :mod:`clipes.backbones.clip_loader`: read an OpenAI CLIP (TorchScript archive, state dict,
  safetensors or a Hugging Face folder via :mod:`clipes.backbones.hf_clip`), architecture from the weights.
* :mod:`clipes.backbones.vit`: the CLIP image tower wrapped for dense use (positional table per grid,
  per-block tokens and attention, the reference attention with its fp16 out-projection).
* :mod:`clipes.backbones.text`: prompt encoding.

Importing this package does no I/O and imports no mmseg.
"""
