"""Export: ``torch.export.export`` of every family, and ONNX (``torch.onnx.export(dynamo=True)``)
run by onnxruntime on the CPU.

The reference ops are plain PyTorch and the attention patterns' index plans become constants of
the exported graph, so the program needs nothing of attnzoo to run. Shapes are static: one
export per input size (as in the README). CI exports four families' smallest models
(``EXPORT_CI``) at their published resolution; every other model and one odd resolution per
family run in the extended tier (an ONNX export costs 10-60 s of CPU per model here).
"""
from __future__ import annotations

import numpy as np
import pytest
import timm
import torch

from tests.zoo.test_compile import CI_MODELS
from tests.zoo.test_models import MODELS

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

ODD = {  # a size no window / block / region divides, per model of the CI set
    "nat_mini": (97, 131), "dinat_mini": (229, 201), "az_davit_tiny": (100, 75), "az_halonet26t": (130, 98),
    "az_shvit_s1": (101, 77), "biformer_tiny": (129, 99), "transnext_micro": (131, 97),
}

# CI: gna's family (the op with trace-time index plans) and the three cheapest others; the extended
# tier exports every model (measured once: all pass) and each CI model at an odd size.
EXPORT_CI = ["nat_mini", "az_davit_tiny", "az_shvit_s1", "az_halonet26t"]
CASES = [pytest.param(n, None, id=f"{n}-published") for n in EXPORT_CI]
CASES += [pytest.param(n, ODD.get(n, (131, 97)), marks=pytest.mark.extended, id=f"{n}-odd") for n in CI_MODELS]
CASES += [pytest.param(n, None, marks=pytest.mark.extended, id=f"{n}-published") for n in MODELS if n not in EXPORT_CI]


def _rel(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.linalg.norm(got - want) / np.linalg.norm(want))


@pytest.mark.parametrize("name,size", CASES)
def test_exports_and_runs_in_onnxruntime(name, size, tmp_path):
    torch.manual_seed(0)
    model = timm.create_model(name).eval()
    h, w = size or model.pretrained_cfg["input_size"][1:]
    x = torch.randn(1, 3, h, w)
    with torch.no_grad():
        want = model(x)
    program = torch.export.export(model, (x,))
    with torch.no_grad():
        assert _rel(program.module()(x).numpy(), want.numpy()) <= 1e-5

    path = tmp_path / f"{name}.onnx"
    torch.onnx.export(program, (x,), str(path), dynamo=True)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    assert got.shape == tuple(want.shape)
    assert _rel(got, want.numpy()) <= 1e-4
