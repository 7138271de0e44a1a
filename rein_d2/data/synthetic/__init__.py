"""A built-in synthetic domain-generalisation benchmark: procedural streets, many domains.

Street scenes labelled with the 19 Cityscapes train ids are rendered in a source style
and in shifted target styles (night, fog, rain, snow, colour, texture, noise, blur,
jpeg) with identical label maps, so the whole train / evaluate / demo pipeline runs in
minutes without any download, and domain shift is measurable.
"""
from .domains import SOURCE_DOMAIN, STYLES, TARGET_DOMAINS
from .generate import SplitSpec, ensure_split, render_sample
from .register import register_synthetic_dg, synthetic_root, synthetic_splits
from .video import make_synthetic_video

__all__ = ["SOURCE_DOMAIN", "STYLES", "TARGET_DOMAINS", "SplitSpec", "ensure_split",
           "render_sample", "register_synthetic_dg", "synthetic_root", "synthetic_splits",
           "make_synthetic_video"]
