"""State spaces and long convolutions: diagonal SSMs (S4D, S5), H3, Hyena, explicit and
implicit long convolutions (long convs, SGConv, CKConv/FlexConv, CCNN) and BiGS. One file per
member or small family; shared pieces in ``common`` and ``tevo.nn.fftconv`` / ``tevo.nn.ssm``."""
