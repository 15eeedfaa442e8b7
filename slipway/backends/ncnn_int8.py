"""ncnn INT8: the calibration table slipway writes from its own calibration data, and ncnn2int8's rewrite.

The ncnn wheels ship neither ``ncnn2table`` nor ``ncnn2int8``, so slipway does both steps (in the child process
of :mod:`slipway.backends.edge_int8`), on the FP32 ``.param`` / ``.bin`` pnnx wrote:

1. **Table.** The FP32 net runs the calibration samples one by one (ncnn has no batch) and every bottom blob of
   a Convolution, ConvolutionDepthWise and InnerProduct layer is folded into slipway's streaming statistics
   (:func:`slipway.quantize.calibrate.update`: min/max and a 2048-bin ``|x|`` histogram); the method
   (``entropy``: TensorRT's KL search, what ncnn2table does by default; ``minmax``, ``percentile``, ``mse``:
   :func:`slipway.quantize.calibrate.threshold`) gives a threshold ``T`` and the blob scale ``127 / T``; the
   weight scales are ``127 / max|w|`` per output channel (per group for a depthwise or grouped convolution). They
   are written as ncnn's table (``model.ncnn.table``: ``<layer>_param_0 <weight scales...>`` and ``<layer>
   <bottom blob scale>``), kept beside the model.
2. **Rewrite** (ncnn2int8's): those layers get ``8=1`` (``int8_scale_term``) in the ``.param``; in the ``.bin``
   their weights become int8 (tag ``0x000D4B38``, ``round(w * scale)`` half away from zero, clamped to
   +-127, padded to 4 bytes, as ncnn's ``float2int8``) and ``weight_data_int8_scales`` + ``bottom_blob_int8_scales``
   follow their bias (raw float32). Every other layer's data is copied; the walk over the ``.bin`` must account
   for its size exactly, else the model is refused (a layer type whose weights the walk does not know).

ncnn then runs those layers in int8 (``opt.use_int8_inference``, on by default), quantizing each bottom blob with
its scale and dequantizing the output; the other layers stay FP32.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from slipway.backends.base import Options, TensorInfo
from slipway.errors import UserError

__all__ = ["NcnnQuantizer", "QUANTIZER", "Layer", "read_param", "walk_bin", "TABLE"]

TABLE = "model.ncnn.table"
INT8_TAG = 0x000D4B38
FP16_TAG = 0x01306B47
RAW_TAG = 0x0002C056
QUANTIZED = ("Convolution", "ConvolutionDepthWise", "InnerProduct")


@dataclass(eq=False)
class Layer:
    type: str
    name: str
    bottoms: list[str]
    tops: list[str]
    params: dict[int, str]
    line: str
    segments: list[tuple[int, int]] = field(default_factory=list)  # (offset, bytes) of each array in the .bin
    weight: tuple[int, int] | None = None  # offset and count of a float32 weight array (after its flag)


def read_param(path: Path) -> tuple[list[str], list[Layer]]:
    """The header lines and the layers of an ncnn ``.param`` file."""
    lines = path.read_text().splitlines()
    if len(lines) < 2 or lines[0].strip() != "7767517":
        raise UserError(f"{path.name} is not an ncnn text .param file")
    layers = []
    for line in lines[2:]:
        parts = line.split()
        if not parts:
            continue
        kind, name, nb, nt = parts[0], parts[1], int(parts[2]), int(parts[3])
        bottoms, tops = parts[4:4 + nb], parts[4 + nb:4 + nb + nt]
        params = {}
        for kv in parts[4 + nb + nt:]:
            k, _, v = kv.partition("=")
            params[int(k)] = v
        layers.append(Layer(kind, name, bottoms, tops, params, line))
    return lines[:2], layers


def _int(layer: Layer, key: int, default: int = 0) -> int:
    return int(layer.params.get(key, default))


def _loads(layer: Layer) -> list[tuple[str, int]]:
    """The arrays ``layer.load_model`` reads, in order: ("w", count) flagged (type 0), ("f", count) raw float32."""
    t, p = layer.type, layer
    if t == "InnerProduct":
        if _int(p, 8):
            return [("?", 0)]
        return [("w", _int(p, 2))] + ([("f", _int(p, 0))] if _int(p, 1) else [])
    if t in ("Convolution", "ConvolutionDepthWise", "Deconvolution", "DeconvolutionDepthWise",
             "Convolution1D", "ConvolutionDepthWise1D", "Deconvolution1D", "Convolution3D",
             "ConvolutionDepthWise3D", "Deconvolution3D", "DeconvolutionDepthWise3D"):
        if _int(p, 19) or _int(p, 8):  # dynamic weight (no data), or already int8 (not walked)
            return [] if _int(p, 19) else [("?", 0)]
        return [("w", _int(p, 6))] + ([("f", _int(p, 0))] if _int(p, 5) else [])
    if t == "BatchNorm":
        return [("f", _int(p, 0))] * 4
    if t == "Scale":
        n = _int(p, 0)
        return [] if n == -233 else [("f", n)] + ([("f", n)] if _int(p, 1) else [])
    if t == "PReLU":
        return [("f", _int(p, 0))]
    if t == "MemoryData":
        dims = [max(_int(p, k), 1) for k in (0, 1, 11, 2)]
        return [("f", int(np.prod(dims)))]
    if t == "LayerNorm":
        return [("f", _int(p, 0))] * 2 if _int(p, 2, 1) else []
    if t == "GroupNorm":
        return [("f", _int(p, 1))] * 2 if _int(p, 3, 1) else []
    if t == "InstanceNorm":
        return [("f", _int(p, 0))] * 2 if _int(p, 2, 1) else []
    if t == "Embed":
        return [("w", _int(p, 3))] + ([("f", _int(p, 0))] if _int(p, 2) else [])
    return []


def walk_bin(layers: list[Layer], data: bytes) -> None:
    """Set each layer's segments in the ``.bin`` bytes; a one-line error unless they account for it exactly."""
    pos = 0
    for layer in layers:
        for kind, count in _loads(layer):
            if kind == "?":
                raise UserError(f"layer {layer.name} is already quantized")
            if kind == "f":
                size = 4 * count
            else:
                tag = int.from_bytes(data[pos:pos + 4], "little")
                if tag in (0, RAW_TAG):  # float32 (ncnn: all four flag bytes 0), or raw float32
                    size = 4 + 4 * count
                    if tag == 0 and layer.weight is None:
                        layer.weight = (pos + 4, count)
                elif tag == FP16_TAG:
                    size = 4 + (2 * count + 3) // 4 * 4
                elif tag == INT8_TAG:
                    size = 4 + (count + 3) // 4 * 4
                else:
                    size = 4 + 1024 + (count + 3) // 4 * 4
            layer.segments.append((pos, size))
            pos += size
    if pos != len(data):
        kinds = sorted({la.type for la in layers if not _loads(la)} - {"Input", "Split"})
        raise UserError(f"the .bin holds {len(data)} bytes but its layers account for {pos}; a layer "
                        f"type's weights are not understood (among {', '.join(kinds) or 'none'})")


def _groups(layer: Layer) -> int:
    """Weight scale groups: output channels of a Convolution / InnerProduct, the groups of a depthwise one."""
    return _int(layer, 7, 1) if layer.type == "ConvolutionDepthWise" else _int(layer, 0)


def weight_scales(w: np.ndarray, groups: int) -> np.ndarray:
    """``127 / max|w|`` per group of consecutive weights (1 for an all-zero group), as ncnn2table."""
    amax = np.abs(w.reshape(groups, -1)).max(axis=1).astype(np.float64)
    return np.where(amax > 0, 127.0 / np.where(amax > 0, amax, 1.0), 1.0).astype(np.float32)


def to_int8(w: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """ncnn's ``float2int8`` per group: round half away from zero, clamp to [-127, 127]."""
    v = w.reshape(len(scales), -1).astype(np.float32) * scales[:, None]
    q = np.trunc(v + np.copysign(0.5, v))
    return np.clip(q, -127, 127).astype(np.int8).reshape(-1)


class NcnnQuantizer:
    """How :mod:`slipway.backends.edge_int8` quantizes and runs ncnn models (see the module doc)."""

    name = "ncnn"
    target = "slipway.backends.ncnn_int8:QUANTIZER"
    methods = ("entropy", "minmax", "percentile", "mse")

    def samples(self, method: str) -> int:
        return 64

    def version(self) -> str:
        from slipway.backends.ncnn import CONVERTER

        return CONVERTER.version()

    def quantize(self, fp32: Path, out: Path, work: Path, feeds: list[dict[str, np.ndarray]], method: str) -> None:
        from slipway.backends.ncnn import BIN, PARAM

        header, layers = read_param(fp32 / PARAM)
        data = (fp32 / BIN).read_bytes()
        walk_bin(layers, data)
        targets = [la for la in layers if la.type in QUANTIZED and la.weight is not None and len(la.bottoms) == 1]
        if not targets:
            raise UserError("the model has no Convolution or InnerProduct layer to quantize")
        bottoms = self._bottom_scales(fp32, layers, targets, feeds, method)
        table, lines, blob = [], [], bytearray()
        pos = 0
        for layer in layers:
            if layer not in bottoms:
                lines.append(layer.line)
                continue
            start, count = layer.weight
            w = np.frombuffer(data, np.float32, count, start)
            ws = weight_scales(w, _groups(layer))
            blob += data[pos:start - 4] + INT8_TAG.to_bytes(4, "little")
            q = to_int8(w, ws).tobytes()
            blob += q + b"\0" * (-len(q) % 4)
            end = layer.segments[-1][0] + layer.segments[-1][1]
            blob += data[start + 4 * count:end] + ws.tobytes() + np.float32(bottoms[layer]).tobytes()
            pos = end
            lines.append(layer.line + " 8=1")
            table.append(f"{layer.name}_param_0 " + " ".join(f"{s:g}" for s in ws))
            table.append(f"{layer.name} {bottoms[layer]:g}")
        blob += data[pos:]
        (out / PARAM).write_text("\n".join(header + lines) + "\n")
        (out / BIN).write_bytes(bytes(blob))
        (out / TABLE).write_text("\n".join(table) + "\n")

    def _bottom_scales(self, fp32: Path, layers: list[Layer], targets: list[Layer],
                       feeds: list[dict[str, np.ndarray]], method: str) -> dict[Layer, float]:
        """``127 / T`` of each target layer's bottom blob, ``T`` by ``method`` over the calibration samples."""
        from slipway.backends.ncnn import BIN, PARAM, _ncnn, _net
        from slipway.quantize.calibrate import threshold, update
        from slipway.quantize.types import TensorStats

        net = _net(fp32 / PARAM, fp32 / BIN, Options(threads=1))
        names = list(dict.fromkeys(la.bottoms[0] for la in targets))
        stats = {n: TensorStats(n, float("inf"), float("-inf"), 0) for n in names}
        mat = _ncnn().Mat
        for feed in feeds:
            arrays = [np.ascontiguousarray(a, dtype=np.float32) for a in feed.values()]
            for b in range(arrays[0].shape[0]):
                with net.create_extractor() as ex:
                    for i, a in enumerate(arrays):
                        ex.input(f"in{i}", mat(a[b]))
                    for n in names:
                        ret, m = ex.extract(n)
                        if ret != 0:
                            raise UserError(f"could not compute blob {n} (error {ret})")
                        update(stats[n], np.array(m), 2048)
        out = {}
        for la in targets:
            t = threshold(stats[la.bottoms[0]], method)
            out[la] = float(np.float32(127.0 / t)) if t > 0 else 1.0
        return out

    def run_files(self, out: Path, inputs: list[TensorInfo],
                  outputs: list[TensorInfo]) -> Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]:
        from slipway.backends.ncnn import CONVERTER

        return CONVERTER.run_files(out, {}, inputs, outputs)

    def crashed(self, method: str, signal: int, log: str) -> str:
        return f"ncnn crashed (signal {signal}) running the calibration or the INT8 model"


QUANTIZER = NcnnQuantizer()
