"""Linear layers with their weights packed as fp16 by fbgemm, computed with fp32 activations.

Why: a search query is one short text (~10 tokens), and MiniLM's matrix products at that size (37
when this was measured; 24 since the query, key and value projections became one) run far below the
core's peak in MKL's fp32 kernel on this project's machines (AMD EPYC, AVX2): 12.3–15.5 ms p50 per
query on one thread, against 8.5–10.3 ms with fbgemm's fp16-weight kernel (ad-hoc, 100 queries each,
three alternating pairs on a loaded machine; docs/PERFORMANCE.md, fourth round). The activations and
the accumulation stay fp32, so only the weights are rounded (relative error ~2e-4 per product); the
query's vector keeps a cosine above 0.99999 to the fp32 one the chunks were stored with. int8 dynamic
quantization, tried earlier, was as fast but moved vectors to a cosine of 0.93–0.96.

fbgemm exists on x86-64 with AVX2 only: elsewhere nothing is packed and the model stays fp32.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

FBGEMM = "fbgemm"


class HalfWeightLinear(torch.nn.Module):
    """`torch.nn.Linear`'s forward with fp16-packed weights; the bias and the output stay fp32.

    Through torch's `quantized::linear_dynamic_fp16` (fbgemm): aten's own fbgemm fp16 ops were ~20%
    faster still, but are deprecated and print a warning in every process that uses them."""

    def __init__(self, linear: torch.nn.Linear) -> None:
        super().__init__()
        bias = linear.bias.detach().float() if linear.bias is not None else None
        self.packed = torch.ops.quantized.linear_prepack_fp16(linear.weight.detach().float(), bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.quantized.linear_dynamic_fp16(x.float(), self.packed)  # type: ignore[no-any-return]


def half_weights_supported(engines: Sequence[str] | None = None) -> bool:
    """Whether this torch build and CPU have fbgemm (`engines`: torch's list, given in tests)."""
    available = torch.backends.quantized.supported_engines if engines is None else engines
    return FBGEMM in available


def pack_half_weights(module: Any, engines: Sequence[str] | None = None) -> int:
    """Replaces every `torch.nn.Linear` under `module` by a HalfWeightLinear, in place; how many.

    0, and the module untouched, where fbgemm is not available."""
    if not half_weights_supported(engines):
        return 0
    replaced = 0
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, torch.nn.Linear):
                setattr(parent, name, HalfWeightLinear(child))
                replaced += 1
    return replaced
