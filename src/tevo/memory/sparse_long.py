"""Long-range memory in only a few layers of a Transformer-XL.

Paper: Do Transformers Need Deep Long-Range Memory? (Rae & Razavi, ACL 2020), §3–4: a
Transformer-XL whose layers do not all keep a long memory: the chosen layers ("long-range
layers") keep the last M_long hidden states, the others a short memory of M_short (0: none, the
current segment only). Per layer l:
    h̃^{l-1} = [SG(m^{l-1}) ∘ h^{l-1}],   m^{l-1}_{τ+1} = last M_l rows of h̃^{l-1}_τ,
    M_l = M_long if l ∈ long_layers else M_short.
The paper finds that a handful of long-range layers placed in the upper half (e.g. the last
layer, or every k-th layer) matches a model with long memory everywhere at a fraction of the
memory and compute; its short layers attend to the last M_short tokens.

Runs through ``xl_memory``'s code (``tevo.memory.xl``): a layer with a shorter memory sees the
matching suffix of the positions and padding mask. Options: mem_len = M_long (≥ 1),
short_len = M_short (≥ 0, default 0), long_layers (layer indices, default the last layer).

Complexity per segment of n tokens: O((M_l + n)² d) attention in layer l; memory
O((|long| M_long + (L − |long|) M_short) d), against O(L M_long d) for xl_memory.
"""
from __future__ import annotations

from ..config import ModelConfig
from ..errors import ConfigError
from ..registry import MEMORIES
from .xl import XLMemory, _check_mem_len, check_wrappable


def _check(short_len, long_layers, n_layers) -> None:
    if isinstance(short_len, bool) or not isinstance(short_len, int) or short_len < 0:
        raise ConfigError("model.memory.short_len", short_len, why="an integer >= 0")
    if long_layers is not None:
        ok = (isinstance(long_layers, (list, tuple)) and long_layers
              and all(isinstance(i, int) and not isinstance(i, bool) for i in long_layers))
        if not ok or (n_layers and any(not 0 <= i < n_layers for i in long_layers)):
            raise ConfigError("model.memory.long_layers", long_layers,
                              why=f"a non-empty list of layer indices in 0..{(n_layers or 1) - 1}")


@MEMORIES.register(
    "sparse_long_memory", paper="Do Transformers Need Deep Long-Range Memory? (Rae & Razavi, "
                                "2020)",
    equation="§3: Transformer-XL memory with M_l = M_long for l ∈ long_layers, M_short otherwise",
    complexity=("O((M_l+n)² d) attention in layer l per segment",
                "O((|long|·M_long + (L−|long|)·M_short)·d)"),
    test="tests/papers/test_memory_sparse_long.py::"
         "test_layers_keep_their_own_memory_length_as_the_recursion_unrolled_by_layer",
    tiny={"mem_len": 8, "short_len": 2, "long_layers": [1]})
class SparseLongMemory(XLMemory):
    """Transformer-XL with a long memory only in the chosen layers and a short one elsewhere."""

    def __init__(self, mem_len: int | None = None, short_len: int = 0,
                 long_layers: list | None = None, d_model: int | None = None,
                 n_layers: int | None = None):
        _check(short_len, long_layers, n_layers)
        super().__init__(mem_len, d_model, n_layers)
        self.short_len = int(short_len)
        last = (n_layers or 1) - 1
        self.long_layers = frozenset(long_layers if long_layers is not None else [last])

    @classmethod
    def check_config(cls, cfg: ModelConfig, mem_len: int | None = None, short_len: int = 0,
                     long_layers: list | None = None, **dims) -> None:
        _check_mem_len(mem_len)
        _check(short_len, long_layers, cfg.n_layers)
        check_wrappable(cfg, "sparse_long_memory", dims, ["mem_len", "short_len", "long_layers"])

    def layer_len(self, layer: int) -> int:
        return self.mem_len if layer in self.long_layers else self.short_len
