"""A network as a file other runtimes can run: TorchScript or ONNX, checked against PyTorch.

Both exporters take an eval-mode network, the example patches it is checked on and the text
metadata to embed (the run's ``plan.json`` and ``config.json``, so the file says how its input
was preprocessed), and return the file's bytes with the largest absolute difference from
PyTorch's output. Nothing is written here: the caller keeps the bytes only when the difference
is within its tolerance (``engine.export`` reads run folders and writes the files).

ONNX: ``torch.onnx.export``'s TorchScript-based exporter (the graph of one forward pass, which is
all these networks have: no data-dependent control flow), input ``image`` (batch, channels, X,
Y, Z), output ``logits``, batch axis dynamic, spatial size fixed to the example's (the sliding
window's tile). ``onnx`` is needed to build the file, ``onnxruntime`` to check it; both are an
optional extra (``pip install .[onnx]``), never needed by training or inference.
"""
from __future__ import annotations

import io
import warnings
from typing import Sequence

import torch
from torch import nn

# ONNX Runtime >= 1.11 runs opset 17 (onnxruntime.ai/docs/reference/compatibility); opset 17 is
# also the first with LayerNormalization, which keeps GroupNorm/InstanceNorm graphs small.
ONNX_OPSET = 17


def torchscript_bytes(model: nn.Module, examples: Sequence[torch.Tensor], extra: dict[str, str]) -> tuple[bytes, float]:
    """``model`` traced on ``examples[0]`` and saved with ``extra`` as TorchScript extra files;
    returns the file's bytes and the largest absolute difference between the reloaded file's and
    ``model``'s outputs over ``examples``."""
    with torch.no_grad():
        traced = torch.jit.trace(model, examples[0], check_trace=False)
        buf = io.BytesIO()
        torch.jit.save(traced, buf, _extra_files=dict(extra))
        loaded = torch.jit.load(io.BytesIO(buf.getvalue()))
        diff = max(float((loaded(x) - model(x)).abs().max()) for x in examples)
    return buf.getvalue(), diff


def onnx_bytes(model: nn.Module, examples: Sequence[torch.Tensor], metadata: dict[str, str]) -> tuple[bytes, float | None]:
    """``model`` as an ONNX model (see the module docstring) with ``metadata`` as metadata
    properties; returns the bytes and the largest absolute difference between ONNX Runtime's and
    ``model``'s outputs over ``examples`` (``None`` when onnxruntime is not installed).
    Raises ImportError when the ``onnx`` package is missing."""
    import onnx

    buf = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        # InstanceNorm without running statistics is exported as training-mode normalisation:
        # the same computation (statistics of the input itself), so the warning says nothing here
        warnings.filterwarnings("ignore", message=".*instance_norm.*")
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*[Cc]onstant folding.*")
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        torch.onnx.export(model, (examples[0],), buf, dynamo=False, opset_version=ONNX_OPSET,
                          input_names=["image"], output_names=["logits"],
                          dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}})
    proto = onnx.load_from_string(buf.getvalue())
    for key, value in metadata.items():
        proto.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(proto)
    data = proto.SerializeToString()
    try:
        import onnxruntime as ort
    except ImportError:
        return data, None
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    with torch.no_grad():
        diff = max(float(abs(session.run(None, {"image": x.numpy()})[0] - model(x).numpy()).max()) for x in examples)
    return data, diff
