"""Read PyTorch ``.pt`` files into NumPy without torch and without executing anything.

Both of ``torch.save``'s formats are supported:

* the zip format (torch >= 1.6 default): ``<prefix>/data.pkl`` plus one raw little-endian
  record ``<prefix>/data/<key>`` per storage;
* the legacy format (``_use_new_zipfile_serialization=False``), after torch/serialization.py
  ``_legacy_save``: pickles of the magic number, the protocol version and a sys-info dict,
  then the main pickle, then a pickled list of storage keys, then each storage's raw bytes
  preceded by its element count as an 8-byte little-endian integer.

Storages saved from a GPU carry a device tag (``'cuda:0'``, as in the ``lpips`` package's
legacy-format linear weights); their bytes are the same as on the CPU, so every storage is
read into host memory whatever its tag says (torch's ``map_location='cpu'``). The tag must be
a plain device string; anything else is refused.

The unpickler is restricted: ``find_class`` resolves only the few globals that torch uses to
rebuild tensors (``torch._utils._rebuild_tensor_v2``, storage classes such as
``torch.FloatStorage``, ``collections.OrderedDict``, ...) and maps each to a NumPy-building
function defined here. Any other global (``os.system``, ``builtins.eval``, ...) raises
:class:`UnsafeCheckpointError` before it is looked up, so nothing from the file is executed.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import struct
import zipfile
from collections.abc import Callable
from typing import Any, BinaryIO

import ml_dtypes
import numpy as np

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001


class UnsafeCheckpointError(ValueError):
    """The file references code that a plain tensor checkpoint never needs; nothing was run."""


class CheckpointFormatError(ValueError):
    """The file is not a readable PyTorch checkpoint."""


# torch storage class name -> NumPy dtype
_STORAGE_DTYPES: dict[str, np.dtype] = {
    "FloatStorage": np.dtype("<f4"),
    "HalfStorage": np.dtype("<f2"),
    "BFloat16Storage": np.dtype(ml_dtypes.bfloat16),
    "DoubleStorage": np.dtype("<f8"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}


class _Frozen:
    """Base of every object the unpickler hands out: no ``__dict__`` and no attribute
    assignment, so a ``BUILD`` opcode in the file cannot alter it."""

    __slots__ = ()

    def __setattr__(self, name: str, value: Any) -> None:
        raise UnsafeCheckpointError(
            f"the checkpoint tries to set attribute {name!r} on {type(self).__name__}"
        )

    def _init(self, **kw: Any) -> None:
        for k, v in kw.items():
            object.__setattr__(self, k, v)


class _StorageType(_Frozen):
    """Stands in for ``torch.<X>Storage`` inside the pickle: only carries the dtype."""

    __slots__ = ("name", "dtype")

    def __init__(self, name: str):
        self._init(name=name, dtype=_STORAGE_DTYPES[name])


class _Marker(_Frozen):
    """Stands in for ``torch.Tensor`` / ``torch.nn.Parameter`` (only ever passed along)."""

    __slots__ = ("name",)

    def __init__(self, name: str):
        self._init(name=name)


class _Storage(_Frozen):
    """A storage whose bytes may arrive after unpickling (legacy format)."""

    __slots__ = ("key", "dtype", "numel", "data")

    def __init__(self, key: str, dtype: np.dtype, numel: int | None):
        self._init(key=key, dtype=dtype, numel=numel, data=None)

    def set_data(self, data: np.ndarray) -> None:
        object.__setattr__(self, "data", data)


class _LazyTensor(_Frozen):
    """``_rebuild_tensor_v2``'s arguments, materialised once all storages are read."""

    __slots__ = ("storage", "offset", "size", "stride")

    def __init__(self, storage: _Storage, offset: int, size: tuple[int, ...],
                 stride: tuple[int, ...]):
        self._init(storage=storage, offset=int(offset), size=size, stride=stride)

    def materialize(self) -> np.ndarray:
        data = self.storage.data
        if not isinstance(data, np.ndarray):
            raise CheckpointFormatError(f"storage {self.storage.key!r} has no data in the file")
        size = tuple(int(s) for s in self.size)
        stride = tuple(int(s) for s in self.stride)
        if len(size) != len(stride):
            raise CheckpointFormatError(f"tensor size {size} and stride {stride} disagree")
        n = int(np.prod(size)) if size else 1
        if n == 0:
            return np.zeros(size, data.dtype)
        last = self.offset + sum((s - 1) * st for s, st in zip(size, stride))
        if self.offset < 0 or min(stride, default=0) < 0 or last >= data.size:
            raise CheckpointFormatError(
                f"tensor of size {size}, stride {stride}, offset {self.offset} does not fit its "
                f"storage {self.storage.key!r} of {data.size} elements"
            )
        base = data[self.offset:]
        view = np.lib.stride_tricks.as_strided(
            base, shape=size, strides=tuple(st * data.itemsize for st in stride), writeable=False
        )
        return np.array(view, copy=True)


def _rebuild_tensor_v2(storage: Any, storage_offset: int, size: Any, stride: Any,
                       requires_grad: Any = False, backward_hooks: Any = None,
                       metadata: Any = None) -> _LazyTensor:
    if not isinstance(storage, _Storage):
        raise CheckpointFormatError("_rebuild_tensor_v2 called without a storage")
    return _LazyTensor(storage, storage_offset, tuple(size), tuple(stride))


def _rebuild_tensor(storage: Any, storage_offset: int, size: Any, stride: Any) -> _LazyTensor:
    return _rebuild_tensor_v2(storage, storage_offset, size, stride)


def _rebuild_parameter(data: Any, requires_grad: Any = False, backward_hooks: Any = None
                       ) -> Any:
    return data


def _rebuild_parameter_with_state(data: Any, requires_grad: Any, backward_hooks: Any,
                                  state: Any) -> Any:
    return data


def _rebuild_from_type_v2(func: Any, new_type: Any, args: Any, state: Any) -> Any:
    if not isinstance(func, _Op) or func.fn is _rebuild_from_type_v2:
        raise UnsafeCheckpointError("_rebuild_from_type_v2 with a function that is not allowed")
    return func(*args)


class _Op(_Frozen):
    """One allowed rebuild function, wrapped so that the file cannot modify it."""

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[..., Any]):
        self._init(fn=fn)

    def __call__(self, *args: Any) -> Any:
        return self.fn(*args)


_FUNCTIONS: dict[tuple[str, str], Callable[..., Any]] = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter_with_state,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
}


def _resolve(module: str, name: str) -> Any:
    """The stand-in for an allowed global, or None. Fresh objects each time."""
    if (module, name) == ("collections", "OrderedDict"):
        return collections.OrderedDict  # a builtin type: BUILD cannot modify it
    if (module, name) == ("torch", "Size"):
        return tuple
    if (module, name) in _FUNCTIONS:
        return _Op(_FUNCTIONS[(module, name)])
    if module == "torch" and name in _STORAGE_DTYPES:
        return _StorageType(name)
    if (module, name) in (("torch", "Tensor"), ("torch.nn.parameter", "Parameter")):
        return _Marker(f"{module}.{name}")
    return None


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only the globals :func:`_resolve` knows; persistent ids must be storages."""

    def __init__(self, file: BinaryIO, load_storage: Callable[[tuple[Any, ...]], _Storage],
                 source: str):
        super().__init__(file)
        self._load_storage = load_storage
        self._source = source

    def find_class(self, module: str, name: str) -> Any:
        obj = _resolve(module, name)
        if obj is None:
            raise UnsafeCheckpointError(
                f"refusing to load {self._source}: it references the Python object "
                f"'{module}.{name}', which a plain tensor checkpoint never needs (loading it "
                f"could run arbitrary code). Nothing from the file was executed. Only tensors, "
                f"storages and (Ordered)dicts are accepted; re-save the weights alone with "
                f"torch.save(model.state_dict(), path) from a trusted environment."
            )
        return obj

    def persistent_load(self, pid: Any) -> Any:
        if not isinstance(pid, tuple) or not pid or pid[0] != "storage":
            raise UnsafeCheckpointError(
                f"refusing to load {self._source}: unexpected persistent id {str(pid)[:80]!r} "
                f"(only tensor storages are accepted)"
            )
        return self._load_storage(pid)


def _materialize(obj: Any) -> Any:
    if isinstance(obj, _LazyTensor):
        return obj.materialize()
    if isinstance(obj, collections.OrderedDict):
        return collections.OrderedDict((k, _materialize(v)) for k, v in obj.items())
    if isinstance(obj, dict):
        return {k: _materialize(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_materialize(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_materialize(v) for v in obj)
    if isinstance(obj, _Frozen):
        raise CheckpointFormatError(
            f"unsupported object {type(obj).__name__} outside a tensor in the checkpoint"
        )
    return obj


def _check_location(location: Any, path: str) -> None:
    """A storage's device tag ('cpu', 'cuda:0', 'mps', ...): read on the CPU whatever it says."""
    if not isinstance(location, str) or len(location) > 64:
        raise CheckpointFormatError(f"{path}: malformed storage location {str(location)[:80]!r}")


def _storage_type(obj: Any) -> _StorageType:
    if not isinstance(obj, _StorageType):
        raise CheckpointFormatError(f"expected a torch storage class, got {obj!r}")
    return obj


def _load_zip(path: str, zf: zipfile.ZipFile) -> Any:
    names = zf.namelist()
    pkls = [n for n in names if n == "data.pkl" or n.endswith("/data.pkl")]
    if len(pkls) != 1:
        raise CheckpointFormatError(
            f"{path} is a zip file but not a torch checkpoint (expected one '<name>/data.pkl', "
            f"found {len(pkls)})"
        )
    prefix = pkls[0][: -len("data.pkl")]
    byteorder = "little"
    if prefix + "byteorder" in names:
        byteorder = zf.read(prefix + "byteorder").decode().strip()
    storages: dict[str, _Storage] = {}

    def load_storage(pid: tuple[Any, ...]) -> _Storage:
        if len(pid) < 5:
            raise CheckpointFormatError(f"malformed storage id {pid!r}")
        _, stype, key, location, numel = pid[:5]
        _check_location(location, path)
        key = str(key)
        if key not in storages:
            st = _storage_type(stype)
            dtype = st.dtype.newbyteorder(">") if byteorder == "big" else st.dtype
            rec = f"{prefix}data/{key}"
            try:
                raw = zf.read(rec)
            except KeyError:
                raise CheckpointFormatError(f"{path}: storage record {rec!r} is missing") from None
            s = _Storage(key, st.dtype, int(numel))
            arr = np.frombuffer(raw, dtype=dtype)
            s.set_data(arr.astype(st.dtype) if byteorder == "big" else arr)
            storages[key] = s
        return storages[key]

    with zf.open(pkls[0]) as f:
        data = f.read()
    try:
        obj = _RestrictedUnpickler(io.BytesIO(data), load_storage, path).load()
    except (UnsafeCheckpointError, CheckpointFormatError):
        raise
    except Exception as e:  # noqa: BLE001 - any failure inside the pickle is a bad file
        raise CheckpointFormatError(f"{path}: corrupt or unsupported torch checkpoint ({e!r})"
                                    ) from e
    return _materialize(obj)


def _load_legacy(path: str, f: BinaryIO) -> Any:
    def plain(name: str) -> Any:
        # the header pickles hold only ints and dicts: refuse every global
        return _RestrictedUnpickler(f, _no_storage, f"{path} ({name})").load()

    def _no_storage(pid: Any) -> Any:
        raise UnsafeCheckpointError(f"{path}: unexpected persistent id in the header")

    magic = plain("magic number")
    if magic != LEGACY_MAGIC:
        raise CheckpointFormatError(f"{path}: not a torch checkpoint (bad magic number)")
    protocol = plain("protocol version")
    if protocol != LEGACY_PROTOCOL:
        raise CheckpointFormatError(f"{path}: unsupported legacy protocol version {protocol}")
    sys_info = plain("sys info")
    little = sys_info.get("little_endian", True) if isinstance(sys_info, dict) else True

    storages: dict[str, _Storage] = {}

    def load_storage(pid: tuple[Any, ...]) -> _Storage:
        # ('storage', storage_type, root_key, location, numel, view_metadata)
        if len(pid) < 5:
            raise CheckpointFormatError(f"malformed storage id {pid!r}")
        _, stype, key, location, numel = pid[:5]
        _check_location(location, path)
        view = pid[5] if len(pid) > 5 else None
        if view is not None:
            raise CheckpointFormatError(f"{path}: storage views (pre-1.0 torch) are not supported")
        key = str(key)
        if key not in storages:
            storages[key] = _Storage(key, _storage_type(stype).dtype, int(numel))
        return storages[key]

    obj = _RestrictedUnpickler(f, load_storage, path).load()
    keys = _RestrictedUnpickler(f, _no_storage, f"{path} (storage keys)").load()
    if not isinstance(keys, list):
        raise CheckpointFormatError(f"{path}: malformed storage key list")
    for key in keys:
        key = str(key)
        head = f.read(8)
        if len(head) != 8:
            raise CheckpointFormatError(f"{path}: truncated before storage {key!r}")
        (numel,) = struct.unpack("<q", head if little else head[::-1])
        if key not in storages:
            raise CheckpointFormatError(f"{path}: data for unknown storage {key!r}")
        s = storages[key]
        nbytes = numel * s.dtype.itemsize
        raw = f.read(nbytes)
        if len(raw) != nbytes:
            raise CheckpointFormatError(f"{path}: storage {key!r} is truncated")
        dtype = s.dtype if little else s.dtype.newbyteorder(">")
        s.set_data(np.frombuffer(raw, dtype=dtype).astype(s.dtype))
    return _materialize(obj)


def load_pt(path: str | os.PathLike[str]) -> Any:
    """Unpickle a ``torch.save`` file into NumPy arrays (dicts, lists and tuples kept).

    Raises :class:`UnsafeCheckpointError` for anything but tensor data and
    :class:`CheckpointFormatError` for files that are not torch checkpoints.
    """
    p = os.fspath(path)
    if zipfile.is_zipfile(p):
        with zipfile.ZipFile(p) as zf:
            return _load_zip(p, zf)
    with open(p, "rb") as f:
        head = f.read(2)
        f.seek(0)
        if head[:1] != b"\x80":
            raise CheckpointFormatError(
                f"{p} is neither a zip-format nor a legacy torch checkpoint (torch.save output); "
                f"very old tar-format checkpoints are not supported"
            )
        try:
            return _load_legacy(p, f)
        except (UnsafeCheckpointError, CheckpointFormatError):
            raise
        except Exception as e:  # noqa: BLE001 - any failure inside the pickle is a bad file
            raise CheckpointFormatError(f"{p}: corrupt or unsupported torch checkpoint ({e!r})"
                                        ) from e
