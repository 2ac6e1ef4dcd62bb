"""Build SpiralFormer-B at tiny width and run it on random bytes (the README's example)."""

import torch

from spiralsearch import ModelConfig, build_model, parse_spec

spec = parse_spec("2+4x{1/8,1/4,1/2,1}+2")  # SpiralFormer-B layout
cfg = ModelConfig.from_spec(spec, preset="tiny")  # topology: mesh, the default
model = build_model(cfg)
idx = torch.randint(0, cfg.vocab_size, (2, 100))  # (batch, tokens); any length works
logits = model(idx)  # (2, 100, 256)
print(spec, spec.family, tuple(logits.shape),
      f"{sum(p.numel() for p in model.parameters()):,} params")
