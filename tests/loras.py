"""LoRA adapters with random weights, written by the training stage's exporter (tests that need a real
adapter GGUF for the embedded model without training one). The writer lives in the package (synth.py), where
the benchmarks use it too."""

from panza_local.train.torch.synth import ALL_LINEAR, ATTENTION, random_lora

__all__ = ["ALL_LINEAR", "ATTENTION", "random_lora"]
