"""Model-file validation: every failure names the offending tensor."""

import pickle

import pytest
import torch
from safetensors.torch import save_file

from morphable import ModelFileError, MorphableModel, read_model_file, validate


def _break(tensors, metadata, name, value):
    tensors = dict(tensors)
    if value is None:
        del tensors[name]
    else:
        tensors[name] = value
    return tensors, metadata


BREAKAGES = {
    "missing identity basis": ("identity_basis", lambda t: None, "missing"),
    "mean wrong width": ("shape_mean", lambda t: t["shape_mean"][:, :2], "shape"),
    "basis vertex count": ("expression_basis", lambda t: t["expression_basis"][:-1], "shape"),
    "albedo mean count": ("albedo_mean", lambda t: t["albedo_mean"][:-1], "shape"),
    "integer mean": ("shape_mean", lambda t: t["shape_mean"].long(), "dtype"),
    "float triangles": ("triangles", lambda t: t["triangles"].float(), "dtype"),
    "triangle out of range": ("triangles", lambda t: t["triangles"].clone().index_fill_(0, torch.tensor([3]), 770), "range"),
    "negative landmark": ("landmarks", lambda t: t["landmarks"].clone().index_fill_(0, torch.tensor([0]), -1), "range"),
    "67 landmarks": ("landmarks", lambda t: t["landmarks"][:67], "shape"),
    "NaN in basis": ("albedo_basis", lambda t: t["albedo_basis"].clone().index_fill_(0, torch.tensor([5]), float("nan")), "NaN"),
    "inf in mean": ("shape_mean", lambda t: t["shape_mean"].clone().index_fill_(0, torch.tensor([1]), float("inf")), "NaN"),
    "degenerate triangle": ("triangles", lambda t: t["triangles"].clone().index_fill_(1, torch.tensor([1]), 0), "repeats"),
    "mask length": ("skin_mask", lambda t: t["skin_mask"][:-1], "shape"),
    "mask values": ("face_mask", lambda t: t["face_mask"].to(torch.uint8) * 3, "0 or 1"),
    "unknown tensor": ("eyeballs", lambda t: torch.zeros(3), "unknown"),
}


@pytest.mark.parametrize("case", BREAKAGES, ids=list(BREAKAGES))
def test_validation_names_the_tensor(tmp_path, model_tensors, case):
    name, make, words = BREAKAGES[case]
    tensors, metadata = model_tensors
    tensors, metadata = _break(tensors, metadata, name, make(tensors))
    path = tmp_path / "broken.safetensors"
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=metadata)
    with pytest.raises(ModelFileError) as info:
        read_model_file(path)
    assert info.value.tensor == name
    assert f"tensor '{name}'" in str(info.value)
    assert words in str(info.value)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("key", ["licence", "units", "albedo_colour_space"])
def test_missing_metadata_is_named(model_tensors, key):
    tensors, metadata = model_tensors
    metadata = {k: v for k, v in metadata.items() if k != key}
    with pytest.raises(ModelFileError, match=key):
        validate(tensors, metadata)


def test_expression_names_must_match_basis(model_tensors):
    tensors, metadata = model_tensors
    with pytest.raises(ModelFileError, match="expression_names"):
        validate(tensors, {**metadata, "expression_names": '["a", "b"]'})


def test_pickle_renamed_to_safetensors_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "executed"

    class Payload:  # unpickling this would create the marker file
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "model.safetensors"
    path.write_bytes(pickle.dumps(Payload()))
    with pytest.raises(ModelFileError, match="not a readable safetensors file"):
        MorphableModel.from_file(path)
    assert not marker.exists()


def test_truncated_file(tmp_path, model_file):
    data = model_file.read_bytes()
    broken = tmp_path / "truncated.safetensors"
    broken.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match="not a readable safetensors file"):
        MorphableModel.from_file(broken)


def test_missing_file(tmp_path):
    with pytest.raises(ModelFileError, match="no such file"):
        MorphableModel.from_file(tmp_path / "nope.safetensors")
