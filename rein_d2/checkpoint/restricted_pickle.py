"""Read checkpoints users bring (torch, MMEngine, Detectron2 .pkl) without running code from them.

A pickle names globals and asks for them to be called (REDUCE), allocated (NEWOBJ) and given
state (BUILD); a plain `pickle.load` imports and runs whatever it names. This unpickler imports
nothing a file names. It materialises only tensors, numpy arrays, dtypes and scalars, plain
containers, strings, bytes and numbers, through a short list of rebuild functions. An object
of any other class (MMEngine's HistoryBuffer in `message_hub`, ...) becomes an `Inert`
placeholder that holds its pickled data and is never imported or called. A file that would
call anything else (`os.system`, `builtins.eval`, `builtins.getattr` on a real object, any
function or constructor) is refused before the call, with the file and the dotted name in the
message.

Torch files go through `torch.load(pickle_module=<this module>)`: torch's own zip and storage
code reads the tensors and asks this module's `Unpickler.find_class` for every other global.
A TorchScript archive (OpenAI's CLIP release) is read the same way, but only its pickled module
(`data.pkl`): its `__torch__.*` module objects become placeholders whose tensors are returned by
their state-dict names; its code is never loaded.
"""
from __future__ import annotations

import _compat_pickle
import logging
import os
import pickle
import sys
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import numpy as np
import torch

from ..errors import ReinD2Error

logger = logging.getLogger(__name__)

ZIP_MAGIC = b"PK\x03\x04"  # what torch.load looks for to take its zip reader


class UnsafePickleError(ReinD2Error, pickle.UnpicklingError):
    """A checkpoint would run code (or do something else than rebuild data) when read."""


class UnreadableCheckpointError(ReinD2Error, ValueError):
    """A file that is neither a torch checkpoint nor a pickle."""


class _Refused(Exception):
    """Raised inside the unpickler; `read_checkpoint` adds the file to the message."""

    def __init__(self, action: str) -> None:
        super().__init__(action)
        self.action = action


class _InertMeta(type):
    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        raise _Refused(f"call {cls.dotted}")

    def __repr__(cls) -> str:
        return f"<inert class {cls.dotted}>"


class Inert(metaclass=_InertMeta):
    """An object of a class that is not weights: its pickled data, and nothing that can run.

    `dotted` is the class's name in the file; `args`, `kwargs`, `state`, `items` and `entries`
    are what the pickle gave to allocate it, to set its state and to fill it as a list or dict.
    """

    dotted: ClassVar[str] = ""
    __slots__ = ("args", "kwargs", "state", "items", "entries")

    @classmethod
    def allocate(cls, args: tuple, kwargs: dict) -> Inert:
        inst = object.__new__(cls)
        inst.args, inst.kwargs, inst.state, inst.items, inst.entries = args, kwargs, None, [], {}
        return inst

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def append(self, item: Any) -> None:
        self.items.append(item)

    def extend(self, items: list) -> None:
        self.items.extend(items)

    add = append

    def __setitem__(self, key: Any, value: Any) -> None:
        self.entries[key] = value

    def __repr__(self) -> str:
        return f"<inert {self.dotted}>"


def _inert_class(dotted: str) -> type[Inert]:
    return _InertMeta(dotted.rpartition(".")[2], (Inert,), {"dotted": dotted, "__slots__": (), "__module__": __name__})


# numpy's rebuilders of arrays (protocols < 5 and 5) and scalars, wherever this numpy keeps them
_reconstruct = np.zeros(1).__reduce__()[0]
_frombuffer = np.zeros(1).__reduce_ex__(5)[0]
_scalar = np.float64(0).__reduce__()[0]


def _numpy_array(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    if subtype is not np.ndarray:
        raise _Refused(f"create an array of type {_dotted(subtype)}")
    return _reconstruct(np.ndarray, shape, dtype)


def _numpy_array_from_buffer(buffer: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:
    if not isinstance(dtype, np.dtype):
        raise _Refused(f"call numpy _frombuffer with a {type(dtype).__name__}")
    return _frombuffer(buffer, dtype, shape, order)


def _numpy_dtype(spec: Any, align: bool = False, copy: bool = False) -> np.dtype:
    if type(spec) is not str:  # any other argument makes numpy look up attributes of it
        raise _Refused(f"call numpy.dtype on a {type(spec).__name__}")
    return np.dtype(spec, align, copy)


def _numpy_scalar(dtype: Any, *data: Any) -> Any:
    if not isinstance(dtype, np.dtype):
        raise _Refused(f"call numpy scalar on a {type(dtype).__name__}")
    return _scalar(dtype, *data)


def _latin1_bytes(text: Any, encoding: Any) -> bytes:
    """How protocol 2 pickles bytes: `_codecs.encode(text, "latin1")`; other codecs import modules."""
    if type(text) is not str or encoding not in ("latin1", "latin-1"):
        raise _Refused(f"call _codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


def _inert_attribute(owner: Any, name: Any) -> type[Inert]:
    """`builtins.getattr` is how protocols < 4 name `Class.attribute` (e.g. MMEngine's HistoryBuffer
    pickles `getattr(HistoryBuffer, "min")`): allowed on a placeholder, giving a placeholder."""
    if not (isinstance(owner, Inert) or _is_inert_class(owner)) or type(name) is not str:
        raise _Refused(f"call builtins.getattr on {_dotted(owner)}")
    return _inert_class(f"{owner.dotted}.{name}")


def _inert_reconstructor(cls: Any, base: Any, state: Any) -> Inert:
    """`copyreg._reconstructor` (protocols 0 and 1) only allocates: allowed for placeholders."""
    if not _is_inert_class(cls):
        raise _Refused(f"call copyreg._reconstructor for {_dotted(cls)}")
    return cls.allocate((base, state), {})


def _typed_list(data: Any) -> list:
    """TorchScript's `torch.jit._pickle.build_{int,double,bool,tensor}list`: the list as it is."""
    if type(data) is not list:
        raise _Refused(f"call torch.jit._pickle's list rebuild on a {type(data).__name__}")
    return data


def _untagged(value: Any, type_str: Any) -> Any:
    """TorchScript's `restore_type_tag(value, "Dict[str, float]")`: the static type is TorchScript's only."""
    return value


_TENSOR_REBUILDS = (torch._utils._rebuild_tensor, torch._utils._rebuild_tensor_v2, torch._utils._rebuild_tensor_v3,
                    torch._utils._rebuild_parameter, torch._utils._rebuild_parameter_with_state)


def _tensor_of_type(func: Any, new_type: Any, args: tuple, state: Any) -> torch.Tensor:
    """`torch._tensor._rebuild_from_type_v2` calls `func`: only a tensor rebuild, to a tensor type."""
    if not any(func is f for f in _TENSOR_REBUILDS) or new_type not in (torch.Tensor, torch.nn.Parameter):
        raise _Refused(f"call {_dotted(func)} through torch._tensor._rebuild_from_type_v2 for {_dotted(new_type)}")
    return torch._tensor._rebuild_from_type_v2(func, new_type, args, state)


# What REDUCE may call: rebuilders of tensors, arrays and containers, each harmless on any argument.
CALLS: dict[str, Callable[..., Any]] = {
    **{f"torch._utils.{f.__name__}": f for f in _TENSOR_REBUILDS},
    "torch._tensor._rebuild_from_type_v2": _tensor_of_type,
    "torch.Size": torch.Size,
    "torch.device": torch.device,
    "collections.OrderedDict": OrderedDict,
    "builtins.set": set,
    "builtins.frozenset": frozenset,
    "builtins.bytes": bytes,
    "builtins.bytearray": bytearray,
    "builtins.complex": complex,
    "_codecs.encode": _latin1_bytes,
    "copyreg._reconstructor": _inert_reconstructor,
    **{f"torch.jit._pickle.build_{kind}list": _typed_list for kind in ("int", "double", "bool", "tensor")},
    "torch.jit._pickle.restore_type_tag": _untagged,
    "builtins.getattr": _inert_attribute,
    **{f"numpy.{core}.multiarray._reconstruct": _numpy_array for core in ("core", "_core")},
    **{f"numpy.{core}.numeric._frombuffer": _numpy_array_from_buffer for core in ("core", "_core")},
    **{f"numpy.{core}.multiarray.scalar": _numpy_scalar for core in ("core", "_core")},
    "numpy.dtype": _numpy_dtype,
}
# What a file may name without calling it: types passed to the rebuilders, and dtypes.
VALUES: dict[str, Any] = {
    "torch.Tensor": torch.Tensor,
    "torch._tensor.Tensor": torch.Tensor,
    "torch.nn.parameter.Parameter": torch.nn.Parameter,
    "torch.UntypedStorage": torch.UntypedStorage,
    "torch.storage.UntypedStorage": torch.UntypedStorage,
    "numpy.ndarray": np.ndarray,
    **{f"torch.{name}": value for name, value in vars(torch).items() if isinstance(value, torch.dtype)},
}
_CALL_IDS = {id(f) for f in CALLS.values()}
_NAMES = {id(obj): name for name, obj in {**VALUES, **CALLS}.items()}


def _is_inert_class(obj: Any) -> bool:
    return isinstance(obj, type) and issubclass(obj, Inert)


def _dotted(obj: Any) -> str:
    if _is_inert_class(obj):
        return obj.dotted
    if id(obj) in _NAMES:
        return _NAMES[id(obj)]
    return f"an object of type {type(obj).__module__}.{type(obj).__qualname__}"


class Unpickler(pickle._Unpickler):
    """Python's own (pure-Python) unpickler with every opcode that can run code checked or replaced.

    GLOBAL, STACK_GLOBAL and INST go through `find_class`, REDUCE and INST/OBJ with arguments
    through `_call`, NEWOBJ(_EX) and argument-less INST/OBJ through `_allocate`, BUILD through
    `load_build`; copyreg extension codes (a process-wide registry) are refused.
    """

    dispatch: ClassVar[dict[int, Callable[[pickle._Unpickler], None]]] = dict(pickle._Unpickler.dispatch)

    def __init__(self, file: Any, **kwargs: Any) -> None:
        super().__init__(file, **kwargs)
        self._inert: dict[str, type[Inert]] = {}

    def find_class(self, module: str, name: str) -> Any:
        sys.audit("pickle.find_class", module, name)
        if self.proto < 3 and self.fix_imports:  # Python 2 names, as pickle maps them
            if (module, name) in _compat_pickle.NAME_MAPPING:
                module, name = _compat_pickle.NAME_MAPPING[(module, name)]
            elif module in _compat_pickle.IMPORT_MAPPING:
                module = _compat_pickle.IMPORT_MAPPING[module]
        dotted = f"{module}.{name}"
        if dotted in CALLS:
            return CALLS[dotted]
        if dotted in VALUES:
            return VALUES[dotted]
        if dotted not in self._inert:
            self._inert[dotted] = _inert_class(dotted)
        return self._inert[dotted]

    def _call(self, func: Any, args: Any) -> Any:
        if id(func) not in _CALL_IDS:
            raise _Refused(f"call {_dotted(func)}")
        return func(*args)

    def _allocate(self, cls: Any, args: tuple, kwargs: dict) -> Inert:
        if not _is_inert_class(cls):
            raise _Refused(f"allocate {_dotted(cls)} with __new__")
        return cls.allocate(tuple(args), dict(kwargs))

    def load_reduce(self) -> None:
        args = self.stack.pop()
        self.stack[-1] = self._call(self.stack[-1], args)

    def load_newobj(self) -> None:
        args = self.stack.pop()
        cls = self.stack.pop()
        self.append(self._allocate(cls, args, {}))

    def load_newobj_ex(self) -> None:
        kwargs = self.stack.pop()
        args = self.stack.pop()
        cls = self.stack.pop()
        self.append(self._allocate(cls, args, kwargs))

    def _instantiate(self, klass: Any, args: list) -> None:
        """INST and OBJ (protocols 0, 1): a call with arguments, an allocation without."""
        self.append(self._call(klass, args) if args else self._allocate(klass, (), {}))

    def load_build(self) -> None:
        state = self.stack.pop()
        inst = self.stack[-1]
        if isinstance(inst, (Inert, np.dtype)) or type(inst) is np.ndarray:
            inst.__setstate__(state)
        elif type(inst) is OrderedDict and isinstance(state, dict):  # a state dict's `_metadata`
            inst.__dict__.update(state)
        else:
            raise _Refused(f"set the state of {_dotted(inst)}")

    def get_extension(self, code: int) -> None:
        raise _Refused(f"look up the copyreg extension code {code}")

    dispatch[pickle.REDUCE[0]] = load_reduce
    dispatch[pickle.NEWOBJ[0]] = load_newobj
    dispatch[pickle.NEWOBJ_EX[0]] = load_newobj_ex
    dispatch[pickle.BUILD[0]] = load_build


def load(file: Any, **kwargs: Any) -> Any:
    """`pickle.load` with the restricted unpickler (torch calls it for legacy files)."""
    return Unpickler(file, **kwargs).load()


def inert_classes(obj: Any) -> set[str]:
    """Dotted class names of the placeholders anywhere in `obj`."""
    found: set[str] = set()
    seen: set[int] = set()
    todo = [obj]
    while todo:
        item = todo.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        todo.extend(_children(item, found))
    return found


def _children(item: Any, found: set[str]) -> Iterator[Any]:
    if isinstance(item, Inert):
        found.add(item.dotted)
        yield from (item.args, item.kwargs, item.state, item.items, item.entries)
    elif isinstance(item, dict):
        yield from item.keys()
        yield from item.values()
    elif isinstance(item, (list, tuple, set, frozenset)):
        yield from item
    elif isinstance(item, np.ndarray) and item.dtype == object:
        yield from item.flat


def _is_torchscript(path: str) -> bool:
    with zipfile.ZipFile(path) as archive:
        return any(name.partition("/")[2] == "constants.pkl" for name in archive.namelist())


def module_tensors(module: Inert, prefix: str = "") -> dict[str, torch.Tensor]:
    """The tensor attributes of a pickled TorchScript module and of its submodules (its `__torch__.*`
    attributes), named as its `state_dict()` names them: its parameters and buffers, and any other
    tensor a scripted module keeps as an attribute."""
    tensors: dict[str, torch.Tensor] = {}
    for name, value in (module.state.items() if isinstance(module.state, dict) else ()):
        if isinstance(value, torch.Tensor):
            tensors[prefix + name] = value
        elif isinstance(value, Inert) and value.dotted.startswith("__torch__."):
            tensors.update(module_tensors(value, f"{prefix}{name}."))
    return tensors


def _read_torchscript(path: str) -> dict[str, torch.Tensor]:
    """The module tensors of a TorchScript archive, read from its `data.pkl` by this unpickler (torch's
    zip reader gives the storages); `torch.load` would hand the archive to `torch.jit.load`."""
    with torch.serialization._open_zipfile_reader(path) as archive:
        module = torch.serialization._load(archive, "cpu", sys.modules[__name__])
    if not isinstance(module, Inert):
        raise UnreadableCheckpointError(f"{path} is a TorchScript archive without a module (it holds a "
                                        f"{type(module).__name__}); give the weights as a .pth of tensors")
    tensors = module_tensors(module)
    logger.info("%s: read the %d tensors of TorchScript module %s; its code was not loaded", path, len(tensors),
                module.dotted)
    return tensors


def _read(path: str) -> Any:
    with open(path, "rb") as f:
        is_zip = f.read(4) == ZIP_MAGIC
        if not is_zip:
            f.seek(0)
            try:
                first = Unpickler(f, encoding="latin1").load()  # Python 2 pickles, as Detectron2 reads them
            except (pickle.UnpicklingError, EOFError, KeyError, IndexError) as err:
                raise UnreadableCheckpointError(
                    f"{path} is neither a torch checkpoint nor a pickle ({type(err).__name__}: {err}); give a "
                    ".pth/.pt/.bin (torch.save), .pkl (pickle) or .safetensors weights file") from None
    if is_zip:
        if _is_torchscript(path):
            return _read_torchscript(path)
        return torch.load(path, map_location="cpu", weights_only=False, mmap=True, pickle_module=sys.modules[__name__])
    if type(first) is int and first == torch.serialization.MAGIC_NUMBER:  # torch's format before zip files
        return torch.load(path, map_location="cpu", weights_only=False, pickle_module=sys.modules[__name__])
    return first


def read_checkpoint(path: str | os.PathLike) -> Any:
    """What a torch (zip or legacy), MMEngine or plain-pickle checkpoint holds, without running its code;
    a TorchScript archive gives its module's tensors by name.

    Objects of other classes come back as `Inert` placeholders; the log names their classes.
    """
    path = os.fspath(path)
    try:
        data = _read(path)
    except _Refused as refused:
        raise UnsafePickleError(
            f"{path} is refused: reading it would {refused.action}, and rein-d2 never runs code from a checkpoint "
            "(nothing was called). It reads tensors, numpy arrays, containers, strings and numbers, and keeps other "
            "objects inert. Do not open this file with pickle.load or torch.load(weights_only=False); if it comes "
            "from a source you trust, re-save only its weights (a dict of tensors) and use that file") from None
    skipped = inert_classes(data)
    if skipped:
        logger.info("%s: metadata of classes that are not weights was kept as inert placeholders, never imported: %s",
                    path, ", ".join(sorted(skipped)))
    return data
