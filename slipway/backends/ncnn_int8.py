"""ncnn INT8: the calibration table slipway writes from its own calibration data, and ncnn2int8's rewrite.

The ncnn wheels ship neither ``ncnn2table`` nor ``ncnn2int8``, so slipway does both steps (in the child process
of :mod:`slipway.backends.edge_int8`), on the FP32 ``.param`` / ``.bin`` pnnx wrote:

1. **Table.** The FP32 net runs the calibration samples one by one (ncnn has no batch) and every bottom blob of
   a Convolution, ConvolutionDepthWise and InnerProduct layer is folded into slipway's streaming statistics
   (:func:`slipway.quantize.calibrate.update`: min/max and a 2048-bin ``|x|`` histogram); the method
   (``entropy``: TensorRT's KL search, what ncnn2table does by default; ``minmax``, ``percentile``, ``mse``:
   :func:`slipway.quantize.calibrate.threshold`; ``auto``, the default: each of the four, and the one whose
   all-int8 model is closest to FP32 is kept) gives a threshold ``T`` and the blob scale ``127 / T``; the
   weight scales are ``127 / max|w|`` per output channel (per group for a depthwise or grouped convolution). They
   are written as ncnn's table (``model.ncnn.table``: ``<layer>_param_0 <weight scales...>`` and ``<layer>
   <bottom blob scale>``), kept beside the model.
2. **Rewrite** (ncnn2int8's): those layers get ``8=1`` (``int8_scale_term``) in the ``.param``; in the ``.bin``
   their weights become int8 (tag ``0x000D4B38``, ``round(w * scale)`` half away from zero, clamped to
   +-127, padded to 4 bytes, as ncnn's ``float2int8``) and ``weight_data_int8_scales`` + ``bottom_blob_int8_scales``
   follow their bias (raw float32). Every other layer's data is copied; the walk over the ``.bin`` must account
   for its size exactly, else the model is refused (a layer type whose weights the walk does not know). The walk
   reads what each layer's ``load_model`` reads in ncnn's source (src/layer/*.cpp), including the transformer
   layers pnnx writes for PP-OCRv4 rec: Gemm (constant A / B / C, flagged), MultiHeadAttention (q, k, v, out
   weights flagged, each followed by its raw bias), LayerNorm, RMSNorm, MemoryData, Embed. Gemm and
   MultiHeadAttention are copied as FP32 (ncnn2int8 can quantize them too; slipway does not yet).
3. **Accuracy budget** (:class:`Budget`): when the all-int8 model's output SNR against the FP32 ncnn model on
   the first calibration samples misses the verification's bar plus :data:`MARGIN_DB`, the layers most
   responsible (per-layer sensitivity, then greedy) stay FP32: no ``8=1``, their FP32 weights as they were.
   Which ones, and the SNRs, go into the INT8 entry's manifest (``accuracy_budget``).

ncnn then runs those layers in int8 (``opt.use_int8_inference``, on by default), quantizing each bottom blob with
its scale and dequantizing the output; the other layers stay FP32.
"""

from __future__ import annotations

import json
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
SEARCH_SAMPLES = 16  # calibration samples the accuracy budget measures on (the first ones: the verification's)
MARGIN_DB = 3.0  # the budget aims this far above the verification's bar (held-out inputs scored up to 2.7 dB lower)
METHODS = ("entropy", "minmax", "percentile", "mse")  # slipway.quantize.calibrate.threshold's
MAX_STEPS = 24  # evaluations the greedy step may spend after the per-layer sensitivities


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
        dims = [_int(p, k) for k in (0, 1, 11, 2)]
        count = int(np.prod([d for d in dims if d])) if any(dims) else 0
        return [("f" if _int(p, 21, 1) else "w", count)] if count else []
    if t == "Gemm":  # A [M,K] / B [N,K] / C as constant_broadcast_type_C says, each flagged (type 0)
        if _int(p, 18):
            return [("?", 0)]
        m, n, k = _int(p, 7), _int(p, 8), _int(p, 9)
        out = [("w", m * k)] if _int(p, 4) else []
        out += [("w", n * k)] if _int(p, 5) else []
        c = {0: 1, 1: m, 2: m, 3: m * n, 4: n}.get(_int(p, 10)) if _int(p, 6) else None
        return out + ([("w", c)] if c else [])
    if t == "MultiHeadAttention":  # q, k, v, out: flagged weights, each followed by its raw float32 bias
        if _int(p, 18):
            return [("?", 0)]
        e, qdim = _int(p, 0), _int(p, 2) // max(_int(p, 0), 1)
        kdim, vdim = _int(p, 3, e), _int(p, 4, e)
        return [("w", e * qdim), ("f", e), ("w", e * kdim), ("f", e), ("w", e * vdim), ("f", e),
                ("w", qdim * e), ("f", qdim)]
    if t == "RMSNorm":
        return [("f", _int(p, 0))] if _int(p, 2, 1) else []
    if t == "LayerNorm":
        return [("f", _int(p, 0))] * 2 if _int(p, 2, 1) else []
    if t == "GroupNorm":
        return [("f", _int(p, 1))] * 2 if _int(p, 3, 1) else []
    if t == "InstanceNorm":
        return [("f", _int(p, 0))] * 2 if _int(p, 2, 1) else []
    if t == "Embed":
        if _int(p, 18):
            return [("?", 0)]
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
    scale = 127.0 / np.where(amax > 0, amax, 1.0)
    # a group of zeros, or of denormals whose scale would overflow float32 (they round to 0 either way): 1
    return np.where((amax > 0) & (scale < np.finfo(np.float32).max), scale, 1.0).astype(np.float32)


def to_int8(w: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """ncnn's ``float2int8`` per group: round half away from zero, clamp to [-127, 127]."""
    v = w.reshape(len(scales), -1).astype(np.float32) * scales[:, None]
    q = np.trunc(v + np.copysign(0.5, v))
    return np.clip(q, -127, 127).astype(np.int8).reshape(-1)


def rewrite(header: list[str], layers: list[Layer], data: bytes, bottoms: dict[Layer, float],
            keep: frozenset[str] | set[str] = frozenset()) -> tuple[str, bytes, str]:
    """ncnn2int8's rewrite of the walked FP32 model: the ``.param`` text, the ``.bin`` bytes and the table, with
    every layer of ``bottoms`` in int8 except those named in ``keep`` (left exactly as they were: FP32)."""
    table, lines, blob = [], [], bytearray()
    pos = 0
    for layer in layers:
        if layer not in bottoms or layer.name in keep:
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
    return "\n".join(header + lines) + "\n", bytes(blob), "\n".join(table) + "\n"


class NcnnQuantizer:
    """How :mod:`slipway.backends.edge_int8` quantizes and runs ncnn models (see the module doc)."""

    name = "ncnn"
    target = "slipway.backends.ncnn_int8:QUANTIZER"
    methods = ("auto", *METHODS)
    key_options = {"accuracy_budget": {"margin_db": MARGIN_DB, "samples": SEARCH_SAMPLES, "max_steps": MAX_STEPS}}

    def samples(self, method: str) -> int:
        return 64

    def version(self) -> str:
        from slipway.backends.ncnn import CONVERTER

        return CONVERTER.version()

    def quantize(self, fp32: Path, out: Path, work: Path, feeds: list[dict[str, np.ndarray]], method: str) -> None:
        from slipway.backends.edge_int8 import MIN_SNR_DB, RECORD
        from slipway.backends.ncnn import BIN, PARAM

        header, layers = read_param(fp32 / PARAM)
        data = (fp32 / BIN).read_bytes()
        walk_bin(layers, data)
        targets = [la for la in layers if la.type in QUANTIZED and la.weight is not None and len(la.bottoms) == 1]
        if not targets:
            raise UserError("the model has no Convolution or InnerProduct layer to quantize")
        names = METHODS if method == "auto" else (method,)
        scales = self._bottom_scales(fp32, layers, targets, feeds, names)
        budget = Budget(fp32, header, layers, data, scales[names[0]], _rows(feeds, SEARCH_SAMPLES), work,
                        MIN_SNR_DB + MARGIN_DB)
        tried: dict[str, float] = {}
        if method == "auto":  # the method whose all-int8 model is closest to FP32 (ties: the earlier one)
            for m in names:
                budget.bottoms = scales[m]
                tried[m] = budget.measure(frozenset())
            method = max(names, key=lambda m: (tried[m], -names.index(m)))
            budget.bottoms = scales[method]
        keep = budget.search(tried.get(method))
        if len(keep) == len(targets):
            least = min(budget.sensitivity, key=lambda n: (-budget.sensitivity[n], n))
            raise UserError(f"no layer stays int8 within the accuracy budget ({budget.target:g} dB SNR on "
                            f"{len(budget.samples)} calibration samples): all-int8 ({method}) is at "
                            f"{budget.all_int8:.1f} dB and the least sensitive layer, {least}, alone at "
                            f"{budget.sensitivity[least]:.1f} dB")
        record = {"method": method, **({"method_snr_db": {m: round(v, 2) for m, v in tried.items()}} if tried else {})}
        (work / RECORD).write_text(json.dumps({**record, **budget.record(keep)}))
        param, blob, table = rewrite(header, layers, data, budget.bottoms, keep)
        (out / PARAM).write_text(param)
        (out / BIN).write_bytes(blob)
        (out / TABLE).write_text(table)

    def _bottom_scales(self, fp32: Path, layers: list[Layer], targets: list[Layer],
                       feeds: list[dict[str, np.ndarray]], methods: tuple[str, ...]) -> dict[str, dict[Layer, float]]:
        """Per method: ``127 / T`` of each target layer's bottom blob, ``T`` by that method over the calibration
        samples (one pass: every method reads the same statistics)."""
        from slipway.backends.ncnn import BIN, PARAM, _ncnn, _net
        from slipway.quantize.calibrate import threshold, update
        from slipway.quantize.types import TensorStats

        net = _net(fp32 / PARAM, fp32 / BIN, Options(threads=1))
        names = list(dict.fromkeys(la.bottoms[0] for la in targets))
        stats = {n: TensorStats(n, float("inf"), float("-inf"), 0) for n in names}
        mat = _ncnn().Mat
        for arrays in _rows(feeds):
            with net.create_extractor() as ex:
                for i, a in enumerate(arrays):
                    ex.input(f"in{i}", mat(a))
                for n in names:
                    ret, m = ex.extract(n)
                    if ret != 0:
                        raise UserError(f"could not compute blob {n} (error {ret})")
                    update(stats[n], np.array(m), 2048)
        out: dict[str, dict[Layer, float]] = {}
        for method in methods:
            out[method] = {}
            for la in targets:
                t = threshold(stats[la.bottoms[0]], method)
                out[method][la] = float(np.float32(127.0 / t)) if t > 0 else 1.0
        return out

    def run_files(self, out: Path, inputs: list[TensorInfo],
                  outputs: list[TensorInfo]) -> Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]:
        from slipway.backends.ncnn import CONVERTER

        return CONVERTER.run_files(out, {}, inputs, outputs)

    def crashed(self, method: str, signal: int, log: str) -> str:
        return f"ncnn crashed (signal {signal}) running the calibration or the INT8 model"


def _rows(feeds: list[dict[str, np.ndarray]], n: int | None = None) -> list[list[np.ndarray]]:
    """The first ``n`` samples (all: None) of the calibration feeds, one list of input arrays (no batch dim) each."""
    out: list[list[np.ndarray]] = []
    for feed in feeds:
        arrays = [np.ascontiguousarray(a, dtype=np.float32) for a in feed.values()]
        out += [[a[b] for a in arrays] for b in range(arrays[0].shape[0])]
    return out[:n]


def _outputs(layers: list[Layer]) -> list[str]:
    """The model's output blobs: pnnx's ``out0``, ``out1``... (what :class:`NcnnSession` extracts), else the tops
    no layer reads, in ``.param`` order."""
    read = {b for la in layers for b in la.bottoms}
    ends = [t for la in layers for t in la.tops if t not in read]
    named = [t for t in ends if t.startswith("out") and t[3:].isdigit()]
    return sorted(named, key=lambda t: int(t[3:])) or ends


class Budget:
    """The accuracy budget: which quantized layers stay FP32 so that the INT8 model's output SNR against the
    FP32 ncnn model (on the first :data:`SEARCH_SAMPLES` calibration samples) reaches ``target`` dB.

    Deterministic, and bounded in evaluations (each one rewrites the files, loads them and runs the samples):

    1. every layer in int8: when it reaches the target, nothing stays FP32 (one evaluation);
    2. else each layer's sensitivity: the SNR with only that layer in int8 (one evaluation per layer), turned into
       its share of the noise, ``10^(-snr/10)`` (noise of independent layers adds up);
    3. the layers with the largest shares (ties: the earlier layer first) are kept FP32 until the shares left,
       scaled to add up to the noise measured in step 1, predict the target; then one more at a time (at most
       :data:`MAX_STEPS` more evaluations) until the measured SNR reaches it. If it never does, the last set is returned and the verification refuses the model.
    """

    def __init__(self, fp32: Path, header: list[str], layers: list[Layer], data: bytes,
                 bottoms: dict[Layer, float], samples: list[list[np.ndarray]], work: Path, target: float) -> None:
        from slipway.backends.ncnn import BIN, PARAM

        self.header, self.layers, self.data, self.bottoms = header, layers, data, bottoms
        self.samples, self.work, self.target = samples, work / "budget", target
        self.names = _outputs(layers)
        self.work.mkdir(exist_ok=True)
        self.reference = self._run(fp32 / PARAM, fp32 / BIN)
        self.evaluations = 0
        self.all_int8: float | None = None
        self.snr: float | None = None
        self.sensitivity: dict[str, float] = {}

    def _run(self, param: Path, weights: Path) -> list[list[np.ndarray]]:
        from slipway.backends.ncnn import _ncnn, _net

        net = _net(param, weights, Options(threads=1))
        mat, out = _ncnn().Mat, []
        for arrays in self.samples:
            with net.create_extractor() as ex:
                for i, a in enumerate(arrays):
                    ex.input(f"in{i}", mat(a))
                got = []
                for n in self.names:
                    ret, m = ex.extract(n)
                    if ret != 0:
                        raise UserError(f"could not compute blob {n} (error {ret})")
                    got.append(np.array(m, dtype=np.float64).ravel())
            out.append(got)
        return out

    def measure(self, keep: frozenset[str]) -> float:
        """The lowest output SNR (dB) of the model with the layers in ``keep`` FP32, the others int8."""
        from slipway.backends.ncnn import BIN, PARAM
        from slipway.compare.metrics import snr_db

        param, blob, _ = rewrite(self.header, self.layers, self.data, self.bottoms, keep)
        (self.work / PARAM).write_text(param)
        (self.work / BIN).write_bytes(blob)
        got = self._run(self.work / PARAM, self.work / BIN)
        self.evaluations += 1
        return min(float(snr_db(np.concatenate([r[k] for r in self.reference]), np.concatenate([g[k] for g in got])))
                   for k in range(len(self.names)))

    def search(self, all_int8: float | None = None) -> frozenset[str]:
        """The layers to keep FP32 (``all_int8``: the SNR with none kept, when already measured)."""
        targets = [la.name for la in self.layers if la in self.bottoms]
        self.all_int8 = self.snr = self.measure(frozenset()) if all_int8 is None else all_int8
        if self.snr >= self.target:
            return frozenset()
        for name in targets:
            self.sensitivity[name] = self.measure(frozenset(targets) - {name})
        share = {n: 10 ** (-min(s, 200.0) / 10) for n, s in self.sensitivity.items()}
        order = sorted(targets, key=lambda n: (-share[n], targets.index(n)))
        # the shares, scaled to add up to the noise measured with every layer in int8, predict the noise left
        total = sum(share.values())
        left, allowed, k = 10 ** (-self.all_int8 / 10), 10 ** (-self.target / 10), 0
        scale = left / total if total > 0 else 0.0
        while k < len(order) and left > allowed:
            left -= scale * share[order[k]]
            k += 1
        keep = frozenset(order[:k])
        self.snr = self.measure(keep)
        for _ in range(MAX_STEPS):
            if self.snr >= self.target or k >= len(order):
                break
            k += 1
            keep = frozenset(order[:k])
            self.snr = self.measure(keep)
        return keep

    def record(self, keep: frozenset[str]) -> dict[str, object]:
        """What the budget did, for the INT8 entry's manifest."""
        kept = [la.name for la in self.layers if la.name in keep]
        return {"target_snr_db": round(self.target, 2), "samples": len(self.samples),
                "snr_db_all_int8": round(self.all_int8, 2) if self.all_int8 is not None else None,
                "snr_db": round(self.snr, 2) if self.snr is not None else None,
                "int8_layers": len(self.bottoms) - len(kept), "fp32_layers": kept,
                "fp32_layer_snr_db": {n: round(self.sensitivity[n], 2) for n in kept if n in self.sensitivity},
                "evaluations": self.evaluations}


QUANTIZER = NcnnQuantizer()
