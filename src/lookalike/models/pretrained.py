"""Pretrained backbones."""
