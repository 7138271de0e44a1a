"""A tiny stand-in meta-architecture for demo tests: a 1x1 convolution over the pixels.

Importing this module registers "TinyFakeSegmenter" in Detectron2's META_ARCH_REGISTRY.
With its initial weights, class c (c = 0, 1, 2) wins where input channel c is the
brightest, so tests can tell RGB from BGR inputs; a checkpoint can change the weights.
"""
import torch
import torch.nn.functional as F
from detectron2.modeling import META_ARCH_REGISTRY
from torch import nn

NUM_CLASSES = 19


@META_ARCH_REGISTRY.register()
class TinyFakeSegmenter(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.classifier = nn.Conv2d(3, NUM_CLASSES, kernel_size=1)
        with torch.no_grad():
            self.classifier.weight.zero_()
            self.classifier.weight[:3, :, 0, 0] = torch.eye(3)
            self.classifier.bias.zero_()
        self.seen_sizes: list[tuple[int, int]] = []  # (H, W) of every image the model received

    def forward(self, batched_inputs):
        outputs = []
        for item in batched_inputs:
            image = item["image"]
            self.seen_sizes.append(tuple(image.shape[-2:]))
            logits = self.classifier(image[None] / 255.0)
            logits = F.interpolate(logits, size=(item["height"], item["width"]), mode="bilinear",
                                   align_corners=False)
            outputs.append({"sem_seg": logits[0]})
        return outputs
