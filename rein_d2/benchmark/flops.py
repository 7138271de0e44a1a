"""FLOPs counted by fvcore, with the operators it does not know that these models use.

fvcore counts one multiply-add as one "flop"; everything here is converted to FLOPs
(2 per multiply-add) so that it compares with a measured matrix-multiply FLOP/s.
Element-wise operators (softmax, GELU, additions) are not counted, as fvcore's default.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from math import prod
from typing import Any

import torch
from detectron2.utils.analysis import FlopCountAnalysis
from fvcore.nn.jit_handles import addmm_flop_jit, get_shape
from torch import nn


def sdpa_flop_jit(inputs: list[Any], outputs: list[Any]) -> int:
    """scaled_dot_product_attention (timm's fused attention, nn.MultiheadAttention's path):
    q k^T and attn v, i.e. batch * L * S * (E + Ev) multiply-adds."""
    q, k, v = (get_shape(x) for x in inputs[:3])
    return prod(q[:-1]) * k[-2] * (q[-1] + v[-1])


EXTRA_HANDLES = {
    "aten::scaled_dot_product_attention": sdpa_flop_jit,
    "aten::addmm_": addmm_flop_jit,  # Rein's folded inference path accumulates in place
}


def count_flops(model: nn.Module, inputs: Sequence[Any]) -> dict[str, Any]:
    """FLOPs of one inference call `model(*inputs)` (traced under no_grad), and the operators
    fvcore could not count (name -> calls): a non-empty list means the total is a lower bound."""
    logging.getLogger("fvcore.nn.jit_analysis").setLevel(logging.ERROR)
    with torch.no_grad():
        analysis = FlopCountAnalysis(model, tuple(inputs)).set_op_handle(**EXTRA_HANDLES)
        analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
        multiply_adds = analysis.total()
        uncounted = dict(analysis.unsupported_ops())
    return {"flops": 2 * int(multiply_adds), "uncounted_ops": uncounted}
