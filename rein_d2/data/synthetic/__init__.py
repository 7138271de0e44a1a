"""A built-in synthetic domain-generalisation benchmark: procedural streets, many domains.

Street scenes are rendered in a source style and in shifted target styles (night, fog,
rain, snow, colour, texture, noise, blur, jpeg) with identical label maps, so the whole
train / evaluate / demo pipeline runs in minutes without any download, and domain shift
is measurable. The labels are the benchmark's own classes (`SYNTHETIC_CLASSES`: the
Cityscapes categories, which are learnable at its 128x256 pixels), carried by every
split's MetadataCatalog entry.
"""
from .classes import SYNTHETIC_CLASSES, SYNTHETIC_COLORS, SYNTHETIC_IGNORE_LABEL
from .domains import SOURCE_DOMAIN, STYLES, TARGET_DOMAINS
from .generate import SplitSpec, ensure_split, ensure_splits, render_sample
from .register import register_synthetic_dg, synthetic_class_metadata, synthetic_root, synthetic_splits
from .video import make_synthetic_video

__all__ = ["SOURCE_DOMAIN", "STYLES", "SYNTHETIC_CLASSES", "SYNTHETIC_COLORS", "SYNTHETIC_IGNORE_LABEL",
           "TARGET_DOMAINS", "SplitSpec", "ensure_split", "ensure_splits", "render_sample",
           "register_synthetic_dg", "synthetic_class_metadata", "synthetic_root", "synthetic_splits",
           "make_synthetic_video"]
