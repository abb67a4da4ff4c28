"""Fused CPU kernels in C++ (``model.layers: fused``), compiled on first use and cached.

:mod:`.build` compiles and loads them (or says why it cannot); :mod:`.functions` gives GELU,
scaled softmax and LayerNorm on them with their gradients.
"""
