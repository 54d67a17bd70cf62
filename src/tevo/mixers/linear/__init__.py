"""Linear, kernel and matrix-method attention: φ(q)ᵀ(Σ φ(k) vᵀ) in parallel, chunk and recurrent
forms (``tevo.nn.chunked``), feature maps (``feature_maps``), landmark / Nyström methods and
attention-free mixers. One file per member; shared pieces in ``common`` and ``landmarks``."""
