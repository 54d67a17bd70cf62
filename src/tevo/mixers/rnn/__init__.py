"""Linear RNNs and convolutional decoders: LRU, QRNN, SRU/SRU++, LMU, ByteNet, TaLK convolutions
and ETSformer's exponential smoothing. Linear recurrences run on ``tevo.nn.scan.parallel_scan``;
each causal member decodes with a fixed-size state. Shared pieces in ``common``."""
