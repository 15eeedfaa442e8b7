"""analyze on real exported models shipped inside pip packages (skipped when those are not installed).

The PP-OCR models (paddle2onnx) keep every weight in a Constant node, declare dynamic dims as
-1 and build Reshape targets from shapes; silero VAD 6 puts its whole network (STFT conv,
encoder convs, LSTM cell, decoder) inside an If on the sample rate, with nested Ifs on shapes.
Every analysis is static: each takes well under a second.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

import slipway
from slipway.analyze import analyze


def packaged(package: str, *parts: str) -> str:
    """A file inside an installed package, found without importing it (silero_vad imports torch)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        pytest.skip(f"{package} is not installed")
    path = Path(spec.submodule_search_locations[0], *parts)
    if not path.is_file():
        pytest.skip(f"{package} does not ship {'/'.join(parts)}")
    return str(path)


@pytest.fixture(scope="module")
def ppocr_det() -> str:
    return packaged("rapidocr_onnxruntime", "models", "ch_PP-OCRv4_det_infer.onnx")


@pytest.fixture(scope="module")
def silero() -> str:
    return packaged("silero_vad", "data", "silero_vad.onnx")


def test_ppocr_det_params_in_constant_nodes_match_info(ppocr_det):
    a = analyze(ppocr_det, {"x": [1, 3, 640, 640]})
    info = slipway.summary(slipway.load(ppocr_det))
    assert a.totals["params"] == info["params"] == 1_171_745
    assert a.totals["not_counted"] == [] and a.totals["trip_count_unknown"] == []
    convs = [n for n in a.nodes if n.op_type in ("Conv", "ConvTranspose")]
    assert len(convs) == 64 and all(n.macs > 0 for n in convs)
    # Weights held by Constant nodes are read like initializers: every byte of them is counted.
    assert a.totals["bytes_read"] > info["param_bytes"]


def test_silero_counts_the_network_inside_its_if(silero):
    a = analyze(silero, {"input": [1, 512], "state": [2, 1, 128]})
    (top,) = [n for n in a.nodes if n.op_type == "If"]
    # 16 kHz branch (the larger): MACs of each layer at 512 samples, by hand.
    stft = 258 * 3 * (1 * 256)  # Conv: 258 filters x 3 frames x 256 taps
    encoder = 128 * 3 * (129 * 3) + 64 * 2 * (128 * 3) + 64 * 1 * (64 * 3) + 128 * 1 * (64 * 3)
    lstm = 4 * 128 * (128 + 128)  # one step, batch 1, 4 gates of 128
    decoder = 1 * 1 * 128
    assert top.macs == stft + encoder + lstm + decoder == 563_968
    assert a.totals["macs"] == 563_968 and a.totals["not_counted"] == []
    assert "branch unknown" in top.note and "then_branch" in top.note  # sr is data: either branch may run
    assert not top.trip_count_unknown and a.totals["trip_count_unknown"] == []  # no Loop in this model
    # Both branches hold weights (16 kHz: 309,633, 8 kHz: 235,649), all in Constant nodes.
    assert top.params == a.totals["params"] == 309_633 + 235_649


@pytest.mark.parametrize(("name", "shape", "params", "output"), [
    ("ch_PP-OCRv4_rec_infer.onnx", [1, 3, 48, 320], 2_690_286, [1, 40, 6625]),  # 320 / 8 = 40 time steps
    ("ch_ppocr_mobile_v2.0_cls_infer.onnx", [1, 3, 48, 192], 133_628, [1, 2]),
])
def test_ppocr_rec_and_cls_are_fully_counted(name, shape, params, output):
    path = packaged("rapidocr_onnxruntime", "models", name)
    a = analyze(path, {"x": shape})
    assert a.totals["params"] == slipway.summary(slipway.load(path))["params"] == params
    assert a.totals["not_counted"] == [] and list(a.summary["outputs"].values()) == [output]
    assert a.totals["macs"] > 0 and all(n.macs > 0 for n in a.nodes if n.op_type in ("Conv", "MatMul"))
