"""sftmix: supervised fine-tuning data composition (Dong et al. 2023, DMT)."""

__version__ = "0.1.0"
