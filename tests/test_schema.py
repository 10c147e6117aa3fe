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


def _with_uv(tensors, per_corner: bool):
    tensors = dict(tensors)
    n, f = tensors["shape_mean"].shape[0], tensors["triangles"].shape[0]
    if per_corner:
        tensors["uv"] = torch.rand(3 * f, 2)
        tensors["uv_triangles"] = torch.arange(3 * f).reshape(f, 3)
    else:
        tensors["uv"] = torch.rand(n, 2)
    return tensors


def _with_dense(tensors, points=5):
    tensors = dict(tensors)
    tensors["dense_triangles"] = torch.arange(points) * 7
    bary = torch.rand(points, 3)
    tensors["dense_barycentrics"] = bary / bary.sum(1, keepdim=True)
    return tensors


@pytest.mark.parametrize("per_corner", [False, True])
def test_uv_per_vertex_and_per_corner_round_trip(tmp_path, model_tensors, per_corner):
    tensors, metadata = model_tensors
    tensors = _with_uv(tensors, per_corner)
    model = MorphableModel(tensors, metadata)
    model.save(tmp_path / "uv.safetensors")
    again = MorphableModel.from_file(tmp_path / "uv.safetensors")
    torch.testing.assert_close(again.uv, tensors["uv"])
    if per_corner:
        assert torch.equal(again.uv_triangles, tensors["uv_triangles"])
    else:
        assert again.uv_triangles is None


UV_BREAKAGES = {
    "uv_triangles without uv": (lambda t: {k: v for k, v in t.items() if k != "uv"}, "uv", "missing"),
    "per-vertex uv of the wrong count": (lambda t: {**{k: v for k, v in t.items() if k != "uv_triangles"},
                                                   "uv": t["uv"][:10]}, "uv", "shape"),
    "uv_triangles out of range": (lambda t: {**t, "uv_triangles": t["uv_triangles"] + 1}, "uv_triangles", "range"),
    "uv_triangles of the wrong count": (lambda t: {**t, "uv_triangles": t["uv_triangles"][:-1]}, "uv_triangles",
                                        "shape"),
}


@pytest.mark.parametrize("case", UV_BREAKAGES, ids=list(UV_BREAKAGES))
def test_uv_validation_names_the_tensor(model_tensors, case):
    tensors, metadata = model_tensors
    make, name, words = UV_BREAKAGES[case]
    with pytest.raises(ModelFileError) as info:
        validate(make(_with_uv(tensors, per_corner=True)), metadata)
    assert info.value.tensor == name and words in str(info.value)


def test_dense_embedding_gives_points_inside_their_triangles(model_tensors):
    tensors, metadata = model_tensors
    tensors = _with_dense(tensors)
    model = MorphableModel(tensors, {**metadata, "dense_landmarks": "test-5"})
    vertices = model.shape()
    points = model.dense_points(vertices)
    corners = vertices[0, model.triangles[tensors["dense_triangles"]]]
    expected = (corners * tensors["dense_barycentrics"][:, :, None]).sum(1)
    torch.testing.assert_close(points[0], expected)
    assert model.num_dense_landmarks == 5


DENSE_BREAKAGES = {
    "no metadata": (lambda t, m: (t, m), "dense_landmarks", "metadata"),
    "barycentrics missing": (lambda t, m: ({k: v for k, v in t.items() if k != "dense_barycentrics"},
                                           {**m, "dense_landmarks": "x"}), "dense_barycentrics", "missing"),
    "triangle out of range": (lambda t, m: ({**t, "dense_triangles": t["dense_triangles"] + 10**6},
                                            {**m, "dense_landmarks": "x"}), "dense_triangles", "range"),
    "not barycentric": (lambda t, m: ({**t, "dense_barycentrics": t["dense_barycentrics"] * 2},
                                      {**m, "dense_landmarks": "x"}), "dense_barycentrics", "barycentric"),
}


@pytest.mark.parametrize("case", DENSE_BREAKAGES, ids=list(DENSE_BREAKAGES))
def test_dense_validation_names_the_tensor(model_tensors, case):
    tensors, metadata = model_tensors
    make, name, words = DENSE_BREAKAGES[case]
    with pytest.raises(ModelFileError) as info:
        validate(*make(_with_dense(tensors), metadata))
    assert info.value.tensor == name and words in str(info.value)
