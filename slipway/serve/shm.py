"""Triton's system shared-memory extension, transport-free: the region registry both adapters share,
the bounds checks, zero-copy input views and the output writes.

A client creates a POSIX shared-memory object (``/dev/shm/<key>``), registers part of it under a
name (``register(name, key, offset, byte_size)``), then names the region, an offset into it and a
byte size in the parameters of an input (``shared_memory_region`` / ``_offset`` / ``_byte_size``:
the data is read from there, none comes in the body) or of a requested output (written there; the
answer's entry carries the same parameters and no data). What Triton does, and so this module:

* inputs are read in place: the engine gets a read-only numpy view of the client's memory, no copy.
  A client that writes the region while its request runs gets what the engine happened to read
  (Triton's contract too: the region belongs to the request until its answer comes back).
  BYTES tensors are Triton's serialized form (4-byte little-endian length + bytes per element),
  decoded into Python bytes (a copy, as every BYTES input);
* an input's byte size must be exactly its shape x datatype size (BYTES: the serialized size); an
  output's region must be at least as large as the output; offset + byte size stay inside the
  registered region, which stays inside the shared-memory object (checked at registration and, as
  the file may shrink, again before each request reads it);
* registering a name twice is refused with Triton's message ("... already in manager"); unregistering
  an unknown name does nothing (Triton's answer); unregistering a region a request is using takes it
  out of the registry at once (new requests no longer find it) and unmaps it when the last request
  holding it finishes, so a request in flight completes normally (Triton defers the unmap the same way);
* keys are names, not paths: leading ``/`` (the POSIX form tritonclient uses) and no other; a
  symbolic link or anything but a regular file is refused.

Every mistake is a :class:`RequestError` (HTTP 400 / gRPC INVALID_ARGUMENT, the same text). CUDA
shared memory is not offered: registering is refused (:func:`cuda_refused`), its status is empty and
unregistering does nothing (what perf_analyzer's clean-up calls expect). The registry is used from
the server's event loop only.
"""

from __future__ import annotations

import mmap
import os
import stat
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from slipway.serve.request import RequestError
from slipway.serve.tensors import element_count, from_raw, numpy_dtype, to_raw
from slipway.serve.types import InferRequest, InferResponse, InferTensor

__all__ = ["SharedMemory", "Region", "Lease", "SHM_ROOT", "PARAMS", "cuda_refused"]

SHM_ROOT = "/dev/shm"  # where POSIX shm_open keeps its objects on Linux
REGION, OFFSET, SIZE = "shared_memory_region", "shared_memory_offset", "shared_memory_byte_size"
PARAMS = (REGION, OFFSET, SIZE)


def cuda_refused() -> RequestError:
    return RequestError("CUDA shared memory is not supported by slipway serve (it serves from CPU memory); "
                        "use system shared memory")


@dataclass(eq=False)
class Region:
    """One registered region: ``byte_size`` bytes of the object ``key`` from ``offset`` on, mapped read-write."""

    name: str
    key: str
    offset: int
    byte_size: int
    fd: int
    map: mmap.mmap
    start: int  # where the region begins in ``map`` (the mapping starts on a page boundary)
    users: int = 0  # requests holding it
    retired: bool = False  # unregistered: unmapped when the last user lets go
    view: memoryview = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.view = memoryview(self.map)[self.start : self.start + self.byte_size]

    def status(self) -> dict[str, Any]:
        return {"name": self.name, "key": self.key, "offset": self.offset, "byte_size": self.byte_size}

    def close(self) -> None:
        try:
            self.view.release()
            self.map.close()
        except BufferError:  # a view still lives (an output aliasing an input): the GC unmaps it later
            pass
        os.close(self.fd)


class SharedMemory:
    """The registry of system shared-memory regions of one server (both transports)."""

    def __init__(self, root: str = SHM_ROOT) -> None:
        self.root = root
        self.regions: dict[str, Region] = {}

    # -- the extension's API -----------------------------------------------------------------------

    def register(self, name: Any, key: Any, offset: Any, byte_size: Any) -> None:
        if not isinstance(name, str) or not name:
            raise RequestError("a shared memory region needs a name")
        if not isinstance(key, str) or not key:
            raise RequestError(f"shared memory region {name!r}: 'key' must be a non-empty string")
        for what, value in (("offset", offset), ("byte_size", byte_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise RequestError(f"shared memory region {name!r}: '{what}' must be a non-negative integer, "
                                   f"got {value!r}")
        if name in self.regions:  # Triton's message
            raise RequestError(f"shared memory region {name!r} already in manager")
        if byte_size == 0:
            raise RequestError(f"shared memory region {name!r}: byte_size must be more than 0")
        file = key.lstrip("/")  # as shm_open: leading slashes name nothing
        if not file or "/" in file or "\0" in file or file in (".", ".."):
            raise RequestError(f"shared memory region {name!r}: key {key!r} is not a shared memory key "
                               "(a name, '/' only in front)")
        try:
            fd = os.open(os.path.join(self.root, file), os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as e:
            raise RequestError(f"shared memory region {name!r}: cannot open the shared memory object with key "
                               f"{key!r} ({e.strerror.lower() if e.strerror else e})") from None
        try:
            info = os.fstat(fd)
            size = info.st_size
            if not stat.S_ISREG(info.st_mode):
                raise RequestError(f"shared memory region {name!r}: key {key!r} is not a shared memory object")
            if offset + byte_size > size:
                raise RequestError(f"shared memory region {name!r}: offset {offset} + byte_size {byte_size} is past "
                                   f"the end of the shared memory object {key!r} ({size} bytes)")
            start = offset - offset % mmap.ALLOCATIONGRANULARITY
            m = mmap.mmap(fd, offset + byte_size - start, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE,
                          offset=start)
        except OSError as e:
            os.close(fd)
            raise RequestError(f"shared memory region {name!r}: cannot map key {key!r} ({e.strerror or e})") from None
        except BaseException:
            os.close(fd)
            raise
        self.regions[name] = Region(name, key, offset, byte_size, fd, m, offset - start)

    def unregister(self, name: str = "") -> None:
        """Forget ``name`` (every region when empty); an unknown name is no error (as Triton)."""
        for n in ([name] if name else list(self.regions)):
            region = self.regions.pop(n, None)
            if region is not None:
                region.retired = True
                if region.users == 0:
                    region.close()

    def status(self, name: str = "") -> list[dict[str, Any]]:
        if not name:
            return [r.status() for r in self.regions.values()]
        region = self.regions.get(name)
        if region is None:
            raise RequestError(f"shared memory region {name!r} is not registered")
        return [region.status()]

    def close(self) -> None:
        self.unregister()

    # -- requests -------------------------------------------------------------------------------

    def lease(self, request: InferRequest) -> Lease | None:
        """Resolve the shared-memory inputs of ``request`` in place (their data becomes views of the
        regions) and check its shared-memory outputs; None when it uses no shared memory. The caller
        must :meth:`Lease.release` what it gets (the regions it names stay mapped until then)."""
        uses = [t for t in request.inputs if _names_shm(t.parameters)]
        outs = [o for o in request.outputs if _names_shm(o.parameters)]
        if not uses and not outs:
            return None
        lease = Lease(self)
        try:
            for t in uses:
                region, offset, size = lease.take("input", t.name, t.parameters)
                t.data = _read(t, region, offset, size)
                t.parameters = {k: v for k, v in t.parameters.items() if k not in PARAMS}
            for o in outs:
                lease.outputs[o.name] = (*lease.take("output", o.name, o.parameters),
                                         {k: o.parameters[k] for k in PARAMS if k in o.parameters})
                o.parameters = {k: v for k, v in o.parameters.items() if k not in PARAMS and k != "binary_data"}
        except BaseException:
            lease.release()
            raise
        return lease

    def _get(self, what: str, tensor: str, name: str) -> Region:
        region = self.regions.get(name)
        if region is None:
            raise RequestError(f"{what} {tensor!r}: shared memory region {name!r} is not registered")
        return region


class Lease:
    """The regions one request uses, held (mapped) until :meth:`release`; writes its outputs."""

    def __init__(self, registry: SharedMemory) -> None:
        self.registry = registry
        self.held: list[Region] = []
        self.outputs: dict[str, tuple[Region, int, int, dict[str, Any]]] = {}

    def take(self, what: str, tensor: str, params: dict[str, Any]) -> tuple[Region, int, int]:
        name, offset, size = _params(what, tensor, params)
        region = self.registry._get(what, tensor, name)
        if offset + size > region.byte_size:
            raise RequestError(f"{what} {tensor!r}: offset {offset} + byte size {size} is past the end of shared "
                               f"memory region {name!r} ({region.byte_size} bytes)")
        if os.fstat(region.fd).st_size < region.offset + region.byte_size:  # the client shrank the object
            raise RequestError(f"{what} {tensor!r}: shared memory region {name!r} is smaller than when it was "
                               "registered; register it again")
        region.users += 1
        self.held.append(region)
        return region, offset, size

    def write(self, response: InferResponse) -> None:
        """Copy the outputs asked for in shared memory into their regions; their entries keep the
        request's parameters and lose their data."""
        for t in response.outputs:
            target = self.outputs.get(t.name)
            if target is None:
                continue
            region, offset, size, params = target
            if t.data is None:
                continue
            raw = _raw(t.data, t.datatype)
            if len(raw) > size:
                raise RequestError(f"output {t.name!r}: shared memory byte size {size} is too small for {t.datatype} "
                                   f"{list(t.shape)} ({len(raw)} bytes)")
            region.view[offset : offset + len(raw)] = raw
            t.data = None
            t.parameters = params

    def release(self) -> None:
        for region in self.held:
            region.users -= 1
            if region.retired and region.users == 0:
                region.close()
        self.held.clear()


def _names_shm(params: dict[str, Any]) -> bool:
    return bool(params) and any(k in params for k in PARAMS)


def _params(what: str, tensor: str, params: dict[str, Any]) -> tuple[str, int, int]:
    name = params.get(REGION)
    if name is None:
        raise RequestError(f"{what} {tensor!r}: {OFFSET} / {SIZE} without {REGION}")
    if not isinstance(name, str) or not name:
        raise RequestError(f"{what} {tensor!r}: {REGION} must be a non-empty string, got {name!r}")
    if SIZE not in params:
        raise RequestError(f"{what} {tensor!r}: {SIZE} is required with {REGION}")
    values = []
    for key in (OFFSET, SIZE):
        v = params.get(key, 0)
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise RequestError(f"{what} {tensor!r}: {key} must be a non-negative integer, got {v!r}")
        values.append(v)
    return name, values[0], values[1]


def _read(t: InferTensor, region: Region, offset: int, size: int) -> np.ndarray:
    """The input's data as a read-only view of the region (BYTES: decoded elements)."""
    dtype = numpy_dtype(t.datatype)  # an unknown datatype: the usual message
    if t.datatype != "BYTES" and size != element_count(t.shape) * dtype.itemsize:
        raise RequestError(f"input {t.name!r}: shared memory byte size {size}, expected "
                           f"{element_count(t.shape) * dtype.itemsize} for {t.datatype} {list(t.shape)}")
    data = from_raw(t.name, region.view[offset : offset + size], t.datatype, t.shape)
    if data.dtype != object:
        data.flags.writeable = False  # the server never writes into a client's input
    return data


def _raw(data: np.ndarray, datatype: str) -> bytes | memoryview:
    if datatype == "BYTES" or data.dtype == object:
        return to_raw(data)
    flat = np.ascontiguousarray(data).reshape(-1)
    return memoryview(flat.view(np.uint8))

