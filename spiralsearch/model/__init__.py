"""The model layer: spec notation (spec), the one generator of every family (transformer:
ModelConfig, SpiralFormer, build_model), causal multi-resolution resampling (resample), the
loop topologies (topology), exact parameter and FLOP counts (counting) and KV-cache decoding
(decode), docs/design.md §1-2. Imports only torch (and fvcore, for counting).
"""
