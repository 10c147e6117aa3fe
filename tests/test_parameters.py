"""Parameters: flat-vector and file round trips, prior sampling."""

import math

import pytest
import torch

from morphable import AMBIENT, Parameters, ParameterSizes

SIZES = ParameterSizes(identity=80, expression=52, albedo=20)


def test_flat_round_trip():
    p = Parameters.sample_prior(SIZES, batch=4, generator=torch.Generator().manual_seed(0))
    p.pose.normal_()
    p.lighting.normal_()
    flat = p.to_flat()
    assert flat.shape == (4, SIZES.total) == (4, 80 + 52 + 20 + 27 + 7)
    q = Parameters.from_flat(flat, SIZES)
    for group, t in p.groups().items():
        assert torch.equal(t, getattr(q, group)), group
    assert torch.equal(q.to_flat(), flat)


def test_flat_wrong_size():
    with pytest.raises(ValueError, match="expected"):
        Parameters.from_flat(torch.zeros(2, SIZES.total + 1), SIZES)


def test_file_round_trip(tmp_path):
    p = Parameters.sample_prior(SIZES, batch=2, generator=torch.Generator().manual_seed(3))
    p.pose.uniform_()
    p.save(tmp_path / "p.safetensors", extra={"camera": torch.tensor([1.0, 2.0])})
    q = Parameters.load(tmp_path / "p.safetensors")
    for group, t in p.groups().items():
        assert torch.equal(t, getattr(q, group)), group


def test_load_rejects_incomplete_file(tmp_path):
    from safetensors.torch import save_file

    save_file({"identity": torch.zeros(1, 3)}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ValueError, match="'expression' missing"):
        Parameters.load(tmp_path / "bad.safetensors")


def test_prior_statistics():
    p = Parameters.sample_prior(SIZES, batch=4000, generator=torch.Generator().manual_seed(0), sigma=0.5)
    for group in ("identity", "expression", "albedo"):
        t = getattr(p, group)
        assert abs(t.mean().item()) < 0.01, group
        assert abs(t.std().item() - 0.5) < 0.01, group
        # Components independent: off-diagonal correlations near zero.
        corr = torch.corrcoef(t.T)
        assert (corr - torch.eye(t.shape[1])).abs().max() < 0.08, group


def test_neutral_pose_and_light():
    p = Parameters.neutral(SIZES, batch=2, scale=3.0)
    assert torch.equal(p.rotation, torch.zeros(2, 3))
    assert torch.equal(p.scale, torch.full((2, 1), 3.0))
    # Ambient irradiance pi * Y00 * L00 equals AMBIENT for every channel.
    dc = p.lighting.reshape(2, 3, 9)[:, :, 0]
    torch.testing.assert_close(math.pi * (0.5 / math.sqrt(math.pi)) * dc, torch.full((2, 3), AMBIENT))
    assert p.lighting.reshape(2, 3, 9)[:, :, 1:].abs().sum() == 0


def test_bad_group_shape():
    p = Parameters.neutral(SIZES)
    with pytest.raises(ValueError, match="'pose'"):
        Parameters(p.identity, p.expression, p.albedo, p.lighting, torch.zeros(1, 6))
