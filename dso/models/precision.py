"""Precision rules shared by the generator modules.

TRELLIS keeps embeddings, norms and the input/output layers in fp32 and runs only the
"torso" (Linear / Conv weights inside the blocks) in half precision. We follow the same
rule so that fp16 checkpoints behave as they do upstream, and add bf16 as an option.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

DTypeName = Literal["fp32", "bf16", "fp16"]

_BY_NAME: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
}
_NAME_OF: dict[torch.dtype, DTypeName] = {
    torch.float32: "fp32",
    torch.bfloat16: "bf16",
    torch.float16: "fp16",
}

# Module types whose parameters move to the compute dtype (TRELLIS ``FP16_MODULES``, dense part).
TORSO_MODULE_TYPES: tuple[type[nn.Module], ...] = (
    nn.Linear,
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
)


def resolve_dtype(value: str | torch.dtype | None, *, use_fp16: bool = False) -> torch.dtype:
    """Turn ``"fp32" | "bf16" | "fp16"`` (or a torch dtype) into a torch dtype.

    ``None`` falls back to TRELLIS's ``use_fp16`` flag: fp16 when set, fp32 otherwise.
    """
    if value is None:
        return torch.float16 if use_fp16 else torch.float32
    if isinstance(value, torch.dtype):
        if value not in _NAME_OF:
            raise ValueError(f"unsupported compute dtype {value}; use one of {sorted(set(_NAME_OF.values()))}")
        return value
    key = str(value).lower()
    if key not in _BY_NAME:
        raise ValueError(f"unsupported compute dtype {value!r}; use one of 'fp32', 'bf16', 'fp16'")
    return _BY_NAME[key]


def dtype_name(dtype: torch.dtype) -> DTypeName:
    """Short name of a compute dtype (``torch.bfloat16`` -> ``"bf16"``)."""
    return _NAME_OF[dtype]


def cast_torso_(module: nn.Module, dtype: torch.dtype) -> None:
    """Cast the parameters of every Linear / Conv inside ``module`` to ``dtype``, in place.

    Norm layers and free parameters (e.g. RMS-norm gammas) are left alone, as TRELLIS does.
    """
    for sub in module.modules():
        if isinstance(sub, TORSO_MODULE_TYPES):
            for param in sub.parameters(recurse=False):
                param.data = param.data.to(dtype)
