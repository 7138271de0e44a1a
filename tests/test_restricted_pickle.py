"""The restricted reader: same data as the standard loaders on honest files, nothing run from others.

The reference for honest files is the standard loader (`torch.load(weights_only=False)`,
`pickle.load`) on files these tests write themselves.
"""
import builtins
import collections
import logging
import pickle
import struct

import numpy as np
import pytest
import torch
from mmengine.logging import MessageHub
from torch import nn

from rein_d2.checkpoint.restricted_pickle import (CALLS, Inert, UnreadableCheckpointError, UnsafePickleError,
                                                  read_checkpoint)
from payloads import Eval, Popen, Shell


class Recorder:
    """An ordinary class whose construction and state setting would leave a trace."""

    calls = []

    def __init__(self):
        Recorder.calls.append("__init__")
        self.value = 3

    def __setstate__(self, state):
        Recorder.calls.append("__setstate__")
        self.__dict__.update(state)


class GetAttr:
    """getattr on a real object reaches its methods (here a classmethod that builds a dict)."""

    def __reduce__(self):
        return builtins.getattr, (collections.OrderedDict, "fromkeys")


def numpy_and_containers():
    return {"array": np.arange(6.0).reshape(2, 3), "objects": np.array([1, "a"], dtype=object),
            "scalar": np.float32(2.5), "dtype": np.dtype("<i2"), "set": {1, 2}, "frozen": frozenset({3}),
            "bytes": b"\x00\xff", "empty": b"", "complex": 1 - 2j, "text": "é", "nested": [(1, None), {"a": True}],
            "ordered": collections.OrderedDict(b=1, a=2)}


def honest_checkpoint():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.randn(5, 3)).sum().backward()
    optimizer.step()
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "param": nn.Parameter(torch.ones(2)),
            "bf16": torch.arange(4, dtype=torch.bfloat16), "torch_dtype": torch.float16,
            "device": torch.device("cpu"), "size": torch.Size([2, 3]), **numpy_and_containers()}


def assert_same(ours, reference):
    assert type(ours) is type(reference)
    if isinstance(reference, torch.Tensor):
        assert ours.dtype == reference.dtype and torch.equal(ours, reference)
    elif isinstance(reference, np.ndarray):
        assert ours.dtype == reference.dtype and (ours == reference).all()
    elif isinstance(reference, dict):
        assert list(ours) == list(reference)
        assert getattr(ours, "_metadata", None) == getattr(reference, "_metadata", None)
        for key in reference:
            assert_same(ours[key], reference[key])
    elif isinstance(reference, (list, tuple)):
        assert len(ours) == len(reference)
        for a, b in zip(ours, reference):
            assert_same(a, b)
    else:
        assert ours == reference


@pytest.fixture()
def reader_log(caplog):
    """The reader's log records (its logger may not propagate once Detectron2 set up "rein_d2")."""
    reader = logging.getLogger("rein_d2.checkpoint.restricted_pickle")
    reader.addHandler(caplog.handler)
    with caplog.at_level(logging.INFO, logger=reader.name):
        yield caplog
    reader.removeHandler(caplog.handler)


@pytest.mark.parametrize("writer", ["torch zip", "torch legacy", "pickle 2", "pickle 4", "pickle 5"])
def test_honest_files_read_as_the_standard_loaders_read_them(tmp_path, writer):
    path = tmp_path / "honest.bin"
    if writer.startswith("torch"):
        torch.save(honest_checkpoint(), path, _use_new_zipfile_serialization=writer == "torch zip")
        reference = torch.load(path, weights_only=False)
        assert reference["model"]._metadata  # compared too
    else:
        with open(path, "wb") as f:
            pickle.dump(numpy_and_containers(), f, protocol=int(writer[-1]))
        with open(path, "rb") as f:
            reference = pickle.load(f)
    assert_same(read_checkpoint(path), reference)


def test_python2_pickles_of_numpy_arrays_read_as_detectron2_reads_them(tmp_path):
    path = tmp_path / "caffe2.pkl"
    with open(path, "wb") as f:
        pickle.dump({"blobs": {"conv1_w": np.ones((2, 3), np.float32)}}, f, protocol=0)
    with open(path, "rb") as f:
        reference = pickle.load(f, encoding="latin1")
    assert_same(read_checkpoint(path), reference)


def test_other_classes_become_inert_placeholders_and_are_logged(tmp_path, reader_log):
    hub = MessageHub.get_instance("test_restricted_pickle")
    hub.update_scalar("train/loss", 0.25)
    path = tmp_path / "meta.pth"
    torch.save({"message_hub": hub.state_dict(), "recorder": Recorder()}, path)
    Recorder.calls.clear()
    data = read_checkpoint(path)
    assert Recorder.calls == []
    recorder = data["recorder"]
    assert isinstance(recorder, Inert) and not isinstance(recorder, Recorder)
    assert recorder.dotted == f"{__name__}.Recorder" and recorder.state == {"value": 3}
    buffer = data["message_hub"]["log_scalars"]["train/loss"]
    assert buffer.dotted == "mmengine.logging.history_buffer.HistoryBuffer"
    assert (buffer.state["_log_history"] == np.array([0.25])).all()
    # HistoryBuffer pickles its statistics methods as getattr(HistoryBuffer, "min"): placeholders too
    assert repr(buffer.state["statistics_methods"]["min"]) == (
        "<inert class mmengine.logging.history_buffer.HistoryBuffer.min>")
    assert "mmengine.logging.history_buffer.HistoryBuffer" in reader_log.text
    assert f"{__name__}.Recorder" in reader_log.text
    with pytest.raises(Exception, match=f"call {__name__}.Recorder"):
        type(recorder)()  # a placeholder class cannot be called either


PAYLOADS = {"os.system": (Shell, r"(os|posix)\.system"), "eval": (Eval, r"builtins\.eval"),
            "subprocess": (Popen, r"subprocess\.Popen")}


@pytest.mark.parametrize("payload", sorted(PAYLOADS))
@pytest.mark.parametrize("writer", ["torch zip", "torch legacy", "pickle 0", "pickle 2", "pickle 4"])
def test_a_file_that_would_call_anything_is_refused_before_the_call(tmp_path, payload, writer):
    make, call = PAYLOADS[payload]
    marker = tmp_path / "marker"
    path = tmp_path / "evil.pth"
    weights = torch.ones(2) if writer.startswith("torch") else np.ones(2)
    data = {"state_dict": {"w": weights}, "meta": {"hooks": [{"after_load": make(marker)}]}}
    if writer.startswith("torch"):
        torch.save(data, path, _use_new_zipfile_serialization=writer == "torch zip")
    else:
        with open(path, "wb") as f:
            pickle.dump(data, f, protocol=int(writer[-1]))
    with pytest.raises(UnsafePickleError, match=f"{path} is refused: reading it would call {call}"):
        read_checkpoint(path)
    assert not marker.exists()
    with open(path, "rb") as f:  # the payload is live: the standard loader runs it
        loaded = torch.load(f, weights_only=False) if writer.startswith("torch") else pickle.load(f)
    if payload == "subprocess":
        loaded["meta"]["hooks"][0]["after_load"].wait()
    assert marker.exists()


class Allocate:
    """Calls a type the reader may name but not call (numpy's array constructor)."""

    def __reduce__(self):
        return np.ndarray, ((2,),)


def test_types_the_reader_knows_are_named_but_never_called(tmp_path):
    path = tmp_path / "ndarray.pkl"
    with open(path, "wb") as f:
        pickle.dump([Allocate()], f, protocol=2)
    with pytest.raises(UnsafePickleError, match=r"would call numpy\.ndarray"):
        read_checkpoint(path)


def test_state_is_set_only_on_placeholders_arrays_dtypes_and_ordered_dicts(tmp_path):
    """A hand-made pickle that sets an attribute on the function numpy.dtype resolves to."""
    evil = b"".join([pickle.PROTO, b"\x02", pickle.GLOBAL, b"numpy\ndtype\n", pickle.NONE, pickle.EMPTY_DICT,
                     pickle.BINUNICODE, struct.pack("<I", 8), b"__tag__x", pickle.BININT1, b"\x01", pickle.SETITEM,
                     pickle.TUPLE2, pickle.BUILD, pickle.STOP])
    (tmp_path / "build.pkl").write_bytes(evil)
    with pytest.raises(UnsafePickleError, match=r"would set the state of numpy\.dtype"):
        read_checkpoint(tmp_path / "build.pkl")
    assert not any(hasattr(f, "__tag__x") for f in CALLS.values())


def test_getattr_on_a_real_object_is_refused(tmp_path):
    path = tmp_path / "getattr.pkl"
    with open(path, "wb") as f:
        pickle.dump({"f": GetAttr()}, f, protocol=2)
    with pytest.raises(UnsafePickleError, match=r"would call builtins\.getattr on collections\.OrderedDict"):
        read_checkpoint(path)


def test_torchscript_archives_give_their_tensors_and_other_files_are_refused(tmp_path):
    linear = nn.Linear(2, 2)
    torch.jit.save(torch.jit.trace(linear, torch.ones(1, 2)), tmp_path / "clip.pt")
    tensors = read_checkpoint(tmp_path / "clip.pt")  # tests/test_official_vfm_files.py: OpenAI's CLIP layout
    assert set(tensors) == {"weight", "bias"}
    assert all(torch.equal(tensors[k], v) for k, v in linear.state_dict().items())
    (tmp_path / "notes.pth").write_text("not weights")
    with pytest.raises(UnreadableCheckpointError, match=r"notes\.pth is neither a torch checkpoint nor a pickle"):
        read_checkpoint(tmp_path / "notes.pth")
