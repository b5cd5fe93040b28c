"""Classification training on timm components, launched with torchrun (not yet written: see README)."""
