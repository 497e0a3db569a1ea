"""The torch training backend: frozen GGUF base, LoRA, int8 products, fused CPU kernels."""
