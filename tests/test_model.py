"""MorphableModel: shapes, linearity, save/load, truncation."""

import pytest
import torch

from morphable import MorphableModel
from synthetic import make_model_tensors


def test_forward_shapes(model):
    b = 3
    sizes = model.parameter_sizes
    v, a = model(torch.randn(b, sizes.identity), torch.randn(b, sizes.expression), torch.randn(b, sizes.albedo))
    assert v.shape == (b, model.num_vertices, 3)
    assert a.shape == (b, model.num_vertices, 3)
    assert model.landmark_points(v).shape == (b, 68, 3)


def test_zero_coefficients_give_the_means(model):
    s = model.parameter_sizes
    v, a = model(torch.zeros(2, s.identity), torch.zeros(2, s.expression), torch.zeros(2, s.albedo))
    assert torch.equal(v[1], model.shape_mean)
    assert torch.equal(a[0], model.albedo_mean)


def test_linearity(model):
    s = model.parameter_sizes
    g = torch.Generator().manual_seed(1)
    id_a, id_b = torch.randn(2, 1, s.identity, generator=g)
    ex_a, ex_b = torch.randn(2, 1, s.expression, generator=g)
    al_a, al_b = torch.randn(2, 1, s.albedo, generator=g)
    v_a, c_a = model(id_a, ex_a, al_a)
    v_b, c_b = model(id_b, ex_b, al_b)
    v_ab, c_ab = model(id_a + id_b, ex_a + ex_b, al_a + al_b)
    # float32 sums of K products added to a mean, then subtracted from it: each side is off by a
    # few float32 steps of the largest term, in an order the CPU's BLAS picks (which differs
    # between CPUs). torch's default rtol 1.3e-6 / atol 1e-5 sat at 0.77 of that here: allow
    # 16 steps (16 * 2^-23 of the largest magnitude) instead.
    def close(a, b, *terms):
        step = 2.0**-23 * max(float(t.abs().max()) for t in terms)
        torch.testing.assert_close(a, b, atol=16 * step, rtol=0)

    close(v_ab - model.shape_mean, (v_a - model.shape_mean) + (v_b - model.shape_mean), v_a, v_b, v_ab)
    close(c_ab - model.albedo_mean, (c_a - model.albedo_mean) + (c_b - model.albedo_mean), c_a, c_b, c_ab)
    # One component moves the vertices by exactly its basis column.
    e0 = torch.zeros(1, s.identity)
    e0[0, 0] = 1.0
    moved = model.shape(e0)[0]
    close(moved - model.shape_mean, model.identity_basis[:, :, 0], moved)


def test_wrong_coefficient_count_is_an_error(model):
    with pytest.raises(ValueError, match=r"expected \[B, 10\]"):
        model(torch.zeros(1, 11))


def test_save_load_round_trip_is_bit_exact(tmp_path, model):
    path = tmp_path / "m.safetensors"
    model.save(path)
    loaded = MorphableModel.from_file(path)
    for name, buf in model.named_buffers():
        assert torch.equal(buf, getattr(loaded, name)), name
        assert buf.dtype == getattr(loaded, name).dtype
    assert loaded.metadata == model.metadata
    model.save(tmp_path / "again.safetensors")
    assert (tmp_path / "again.safetensors").read_bytes() == path.read_bytes()


def test_float16_storage_loads_as_float32(tmp_path, model):
    path = tmp_path / "half.safetensors"
    model.save(path, float_dtype=torch.float16)
    loaded = MorphableModel.from_file(path)
    assert loaded.identity_basis.dtype == torch.float32
    torch.testing.assert_close(loaded.identity_basis, model.identity_basis, atol=1e-2, rtol=1e-3)


def test_truncation(tmp_path):
    tensors, metadata = make_model_tensors()
    full = MorphableModel(tensors, metadata)
    small = MorphableModel(tensors, metadata, n_identity=3, n_expression=2, n_albedo=0)
    assert (small.n_identity, small.n_expression, small.n_albedo) == (3, 2, 0)
    assert small.expression_names == ["e0", "e1"]
    coeffs = torch.randn(1, 3)
    padded = torch.cat([coeffs, torch.zeros(1, full.n_identity - 3)], 1)
    torch.testing.assert_close(small.shape(coeffs), full.shape(padded))
    small.save(tmp_path / "small.safetensors")
    assert MorphableModel.from_file(tmp_path / "small.safetensors").n_identity == 3
    with pytest.raises(ValueError, match="has 10 identity components"):
        MorphableModel(tensors, metadata, n_identity=11)


def test_buffers_follow_the_module(model):
    names = {n for n, _ in model.named_buffers()}
    assert {"shape_mean", "identity_basis", "triangles", "landmarks", "skin_mask"} <= names
    assert model.double().shape_mean.dtype == torch.float64
