"""morph convert: each source format, written by morphable.convert.fixtures in its published layout,
converts to the numbers put in; bad, truncated and malicious files fail in one line and run nothing."""

import json
import os
import pickle
import re
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from cli import app
from morphable import MorphableModel
from morphable.convert import ConvertError, UnknownOption, convert
from morphable.convert import fixtures as fx
from morphable.convert.geometry import complete_landmarks, orient_outward
from morphable.convert.sfm import EOS_IBUG_TO_SFM
from morphable.convert.template import TEMPLATE_68

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


@pytest.fixture(scope="module")
def face():
    return fx.make_face(800, k_identity=4, k_expression=3, k_albedo=2, seed=3)


@pytest.fixture(scope="module")
def files(face, tmp_path_factory):
    """Every format written once (module scope keeps the file fast)."""
    root = tmp_path_factory.mktemp("sources")
    out = {"bfm2009": fx.write_bfm2009(face, root / "bfm2009", expressions=True, deep3d=True),
           "bfm2017": fx.write_bfm2017(face, root / "bfm2017" / "model2019_face12.h5"),
           "flame": fx.write_flame(face, root / "flame", texture_side=32),
           "flame68": fx.write_flame(face, root / "flame68", static_68=True, masks=False, name="flame2023_Open.pkl"),
           "ict": fx.write_ict(face, root / "ict"),
           "sfm": fx.write_sfm(face, root / "sfm")}
    out["sfm_map"] = fx.write_eos_mapping(face.landmarks, root / "sfm" / "ibug_to_sfm.txt", skip=[*range(17), 60, 64])
    return out


def centred(v):
    return v - (v.min(0) + v.max(0)) / 2


def assert_outward(model):
    tri = model.triangles.numpy()
    assert not orient_outward(model.shape_mean.double().numpy(), tri)[1]


def close(a, b, tol=1e-4):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    assert np.abs(a - b).max() <= tol * max(1.0, np.abs(b).max()), np.abs(a - b).max()


def test_template_is_the_default_models_landmarks():
    m = MorphableModel.from_file(ROOT / "assets" / "morph_face.safetensors")
    assert np.abs(m.shape_mean[m.landmarks].numpy() - TEMPLATE_68).max() < 0.06


# -- BFM 2009 -----------------------------------------------------------------------------------
def test_bfm2009_trim_with_expressions(face, files):
    m = convert(files["bfm2009"], "bfm2009")
    trim = np.arange(face.n - 3)
    close(m.shape_mean, centred(face.vertices[trim]))                       # micrometres -> mm
    close(m.identity_basis, face.scaled(face.id_basis, face.id_sigma)[trim])  # shapePC x shapeEV (σ)
    close(m.expression_basis, face.scaled(face.exp_basis, face.exp_sigma)[trim])
    close(m.albedo_mean, face.albedo_mean[trim])                             # 0-255 -> [0, 1]
    close(m.albedo_basis, face.scaled(face.albedo_basis, face.albedo_sigma)[trim])
    assert_outward(m)  # the file's clockwise tl were reversed
    assert sorted(map(tuple, np.sort(m.triangles.numpy(), 1))) == sorted(map(tuple, np.sort(face.triangles, 1)))
    assert m.landmarks.tolist() == face.landmarks.tolist()  # Deep3DFaceRecon keypoints, mapped back
    assert m.metadata["units"] == "mm" and "Basel Face Model 2009" in m.metadata["licence"]


def test_bfm2009_front_crop_keeps_deep3d_topology_keypoints_and_masks(face, files):
    m = convert(files["bfm2009"].parent, "bfm2009", crop="front")
    keep = np.flatnonzero(face.vertices[: face.n - 3, 2] > 0)
    close(m.shape_mean, centred(face.vertices[keep]))
    close(m.expression_basis, face.scaled(face.exp_basis, face.exp_sigma)[keep])
    assert m.landmarks.tolist() == np.searchsorted(keep, face.landmarks).tolist()
    assert m.skin_mask.tolist() == (face.vertices[keep, 1] < 20).tolist()
    assert m.face_mask.tolist() == (face.vertices[keep, 2] > 20).tolist()
    assert_outward(m)


# -- BFM 2017 / 2019 ----------------------------------------------------------------------------
def test_bfm2017_adds_the_expression_mean_and_derives_missing_landmarks(face, files):
    m = convert(files["bfm2017"], "bfm2019")
    expected = face.vertices + [0, 0, 2.0]  # the writer's non-zero expression mean
    close(m.shape_mean, centred(expected))
    close(m.identity_basis, face.scaled(face.id_basis, face.id_sigma))  # pcaBasis x sqrt(pcaVariance)
    close(m.albedo_mean, face.albedo_mean)
    given = [36, 45, 30, 48, 54]  # the file's named landmarks
    assert m.landmarks[given].tolist() == face.landmarks[given].tolist()
    assert "5 of 68 from 5 named landmarks" in m.metadata["description"]
    assert "derived geometrically" in m.metadata["description"]
    assert_outward(m)


# -- FLAME --------------------------------------------------------------------------------------
def test_flame_pickle_without_chumpy(face, files):
    m = convert(files["flame"], "flame")
    close(m.shape_mean, centred(face.vertices))  # metres -> mm
    assert m.n_identity == 300 and m.n_expression == 3
    close(m.identity_basis[:, :, :4], face.scaled(face.id_basis, face.id_sigma))
    close(m.expression_basis, face.scaled(face.exp_basis, face.exp_sigma))
    assert m.landmarks.tolist() == face.landmarks.tolist()  # static 51 + dynamic row 0 (yaw 0) for the jaw
    assert torch.allclose(m.dense_barycentrics.max(1).values, torch.tensor(0.8))
    assert m.face_mask.tolist() == (face.vertices[:, 2] > 0).tolist()
    lips = np.abs(face.vertices[:, 1] + 40) < 8
    assert m.skin_mask.tolist() == ((face.vertices[:, 2] > 0) & ~lips).tolist()
    close(m.uv, face.uv)  # FLAME_texture.npz's vt, per corner with ft
    assert m.uv_triangles.shape == m.triangles.shape
    # Albedo sampled from the 32x32 BGR texture whose red grows with u and green with rows.
    s, used = 32, np.unique(face.triangles)  # the fixture's few extra vertices are on no triangle
    u_expected = np.clip(face.uv[used, 0] * s - 0.5, 0, s - 1) / (s - 1)
    row_expected = np.clip((1 - face.uv[used, 1]) * s - 0.5, 0, s - 1) / (s - 1)
    close(m.albedo_mean[used, 0], u_expected, 1e-3)
    close(m.albedo_mean[used, 1], row_expected, 1e-3)
    close(m.albedo_basis[:, :, 1], 2 * 0.1 * m.albedo_mean.numpy(), 1e-3)
    assert "dropped: J_regressor" in m.metadata["description"] and "FLAME licence" in m.metadata["licence"]


def test_flame_68_point_embedding_and_open_licence(face, files):
    m = convert(files["flame68"], "flame")
    assert m.landmarks.tolist() == face.landmarks.tolist()
    assert m.metadata["licence"].startswith("CC-BY-4.0")


def test_malicious_pickles_run_nothing(files, tmp_path):
    """A model pickle, an .npy embedding and a masks pickle that call os.system when unpickled."""
    marker = tmp_path / "pwned"
    evil = _EvilCall(f"touch {marker}")
    model = tmp_path / "generic_model.pkl"
    model.write_bytes(pickle.dumps({"v_template": evil}, protocol=2))
    embedding = tmp_path / "landmark_embedding.npy"
    np.save(embedding, np.array({"lmk_face_idx": evil}, dtype=object), allow_pickle=True)
    masks = tmp_path / "FLAME_masks.pkl"
    masks.write_bytes(pickle.dumps({"face": evil}))  # protocol 4: a Python 3 pickle
    for source, options in ((model, {}), (files["flame"], {"landmarks": embedding}),
                            (files["flame"], {"masks": masks})):
        with pytest.raises(ConvertError, match=r"refused to load '(posix|nt)\.system'.*nothing was executed"):
            convert(source, "flame", **options)
    assert not marker.exists()


# -- ICT-FaceKit --------------------------------------------------------------------------------
def test_ict_obj_folder(face, files):
    m = convert(files["ict"], "ict", region="full")
    close(m.shape_mean, centred(face.vertices), 1e-5)  # centimetres -> mm (OBJ keeps 6 decimals)
    close(m.identity_basis, face.scaled(face.id_basis, face.id_sigma), 1e-5)
    close(m.expression_basis, 0.25 * face.scaled(face.exp_basis, face.exp_sigma), 1e-5)
    assert json.loads(m.metadata["expression_names"]) == list(fx.EXPRESSION_NAMES[:3])
    faces = [line for line in (files["ict"] / "generic_neutral_mesh.obj").read_text().splitlines() if line[:2] == "f "]
    assert sum(len(f.split()) == 5 for f in faces) > len(faces) // 2  # mostly quads, as ICT's mesh
    assert m.num_triangles == len(face.triangles)  # quads fanned back into the same triangles
    assert sorted(map(tuple, np.sort(m.triangles.numpy(), 1))) == sorted(map(tuple, np.sort(face.triangles, 1)))
    assert m.uv.shape == (face.n, 2) and m.uv_triangles.shape == m.triangles.shape
    assert m.landmarks.tolist() == face.landmarks.tolist() and m.metadata["licence"].startswith("MIT")
    assert_outward(m)


# -- Surrey Face Model --------------------------------------------------------------------------
@pytest.mark.parametrize("version", [1, 2, 3, 4])
def test_sfm_every_eos_file_version(face, files, tmp_path, version):
    path = fx.write_sfm(face, tmp_path, version=version, colour=version == 3)
    m = convert(path, "sfm", landmarks=files["sfm_map"])
    close(m.shape_mean, centred(face.vertices))
    close(m.identity_basis, face.scaled(face.id_basis, face.id_sigma))  # basis x sqrt(eigenvalues)
    close(m.expression_basis, 0.25 * face.scaled(face.exp_basis, face.exp_sigma))
    assert json.loads(m.metadata["expression_names"]) == ["anger", "disgust", "fear"]
    close(m.uv, face.uv)  # eos stores v down; the schema has v up
    assert (m.n_albedo == 2) == (version == 3)
    given = [i for i in range(68) if i not in [*range(17), 60, 64]]
    assert m.landmarks[given].tolist() == face.landmarks[given].tolist()
    assert "iBUG points 0-16, 60, 64 (0-based) derived" in m.metadata["description"]


def test_sfm_3448_uses_eos_mapping(tmp_path):
    pinned = {k - 1: v for k, v in EOS_IBUG_TO_SFM.items()}
    face = fx.make_face(3448, k_identity=3, pinned=pinned)
    m = convert(fx.write_sfm(face, tmp_path), "sfm")
    assert all(m.landmarks[i].item() == v for i, v in pinned.items())
    assert "50 of 68 from eos share/ibug_to_sfm.txt" in m.metadata["description"]
    assert "0-7, 9-16, 60, 64 (0-based) derived" in m.metadata["description"]


def test_derived_landmarks_land_near_the_true_ones():
    """On faces from the default model's prior, with jaw and inner mouth corners withheld."""
    m = MorphableModel.from_file(ROOT / "assets" / "morph_face.safetensors")
    tri, lm = m.triangles.numpy(), m.landmarks.numpy()
    hidden = [*range(17), 60, 64]
    errors = []
    for seed in range(20):
        coeffs = torch.randn(1, m.n_identity, generator=torch.Generator().manual_seed(seed))
        v = m.shape(coeffs)[0].double().numpy()
        partial = lm.copy()
        partial[hidden] = -1
        out, derived = complete_landmarks(v, tri, partial)
        assert derived == hidden and (out[~np.isin(np.arange(68), hidden)] == partial[partial >= 0]).all()
        eye = np.linalg.norm(v[lm[45]] - v[lm[36]])
        errors.append(np.linalg.norm(v[out[hidden], :2] - v[lm[hidden], :2], axis=1) / eye)
    assert np.mean(errors) < 0.045  # measured 0.038 (0.060 at 1.5 sigma)


# -- options, truncation and errors -------------------------------------------------------------
def test_truncation_and_options(files):
    m = convert(files["sfm"], "sfm", landmarks=files["sfm_map"], n_identity=2, n_expression=1, licence="mine")
    assert (m.n_identity, m.n_expression, m.metadata["licence"]) == (2, 1, "mine")
    assert json.loads(m.metadata["expression_names"]) == ["anger"]
    with pytest.raises(UnknownOption):
        convert(files["sfm"], "sfm", region="face")
    with pytest.raises(ConvertError, match="n_identity=9"):
        convert(files["sfm"], "sfm", landmarks=files["sfm_map"], n_identity=9)


def test_missing_optional_dependency_names_the_extra(files, monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "h5py", None)
    with pytest.raises(ConvertError, match=r"needs h5py: pip install 'morph\[convert\]'"):
        convert(files["bfm2017"], "bfm2017")


@pytest.mark.parametrize("case", ["truncated", "corrupt_size", "wrong_version"])
def test_bad_cereal_files(files, tmp_path, case):
    data = files["sfm"].read_bytes()
    bad = {"truncated": data[: len(data) // 2],
           "corrupt_size": data[:4] + struct.pack("<ii", 2**30, 1) + data[12:],
           "wrong_version": struct.pack("<I", 9) + data[4:]}[case]
    path = tmp_path / "sfm_shape_800.bin"
    path.write_bytes(bad)
    with pytest.raises(ConvertError) as info:
        convert(path, "sfm")
    assert "\n" not in str(info.value) and str(path) in str(info.value)


# -- the CLI ------------------------------------------------------------------------------------
def test_cli_convert_then_info_and_sample(files, tmp_path):
    out = tmp_path / "bfm.safetensors"
    result = runner.invoke(app, ["convert", str(files["bfm2009"].parent), "--from", "bfm2009", "--crop", "front",
                                 "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "wrote" in result.stdout and "Deep3DFaceRecon" in result.stdout
    info = runner.invoke(app, ["info", str(out)])
    assert info.exit_code == 0 and re.search(r"^units\s+mm$", info.stdout, re.M)
    assert re.search(r"^licence\s+Basel Face Model 2009", info.stdout, re.M)
    sample = runner.invoke(app, ["sample", str(out), "--count", "1", "--out", str(tmp_path / "s")])
    assert sample.exit_code == 0, sample.output
    model = MorphableModel.from_file(out)
    assert model.shape_mean.dtype == torch.float32 and model.num_vertices == len(model.skin_mask)


def test_cli_help_names_each_formats_files():
    result = runner.invoke(app, ["convert", "--help"])
    text = re.sub(r"\s+", " ", result.stdout)
    assert result.exit_code == 0 and "Example: morph convert" in text
    for name in ("01_MorphableModel.mat", "Exp_Pca.bin", "facemodel_info.mat", ".h5", "generic_model.pkl",
                 "landmark_embedding.npy", "FLAME_masks.pkl", "vertex_indices.json", "sfm_shape_", "expression_blend"):
        assert name in text, name


@pytest.mark.parametrize("case", ["corrupt_mat", "truncated_h5", "wrong_format", "malicious", "option"])
def test_cli_bad_input_is_one_line_and_writes_nothing(files, tmp_path, case):
    marker = tmp_path / "marker"
    if case == "corrupt_mat":
        (tmp_path / "01_MorphableModel.mat").write_bytes(b"MATLAB 5.0 MAT-file" + b"\0" * 200)
        args = [str(tmp_path), "--from", "bfm2009"]
    elif case == "truncated_h5":
        (tmp_path / "m.h5").write_bytes(files["bfm2017"].read_bytes()[:3000])
        args = [str(tmp_path / "m.h5"), "--from", "bfm2017"]
    elif case == "wrong_format":
        args = [str(files["sfm"]), "--from", "flame"]
    elif case == "malicious":
        (tmp_path / "generic_model.pkl").write_bytes(pickle.dumps(_EvilCall(f"touch {marker}"), protocol=2))
        args = [str(tmp_path / "generic_model.pkl"), "--from", "flame"]
    else:
        args = [str(files["sfm"]), "--from", "sfm", "--crop", "front"]
    out = tmp_path / "out.safetensors"
    result = runner.invoke(app, ["convert", *args, "--out", str(out)])
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("morph: error: "), result.stderr
    assert not out.exists() and not marker.exists()
    assert not list(tmp_path.glob(".out.safetensors*"))


class _EvilCall:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


@pytest.mark.parametrize("fmt", ["bfm2009", "bfm2017"])
def test_full_size_basel_models_use_eos_mappings(tmp_path, fmt):
    """At the published vertex counts the built-in eos mappings apply; the rest is derived."""
    from morphable.convert.bfm2009 import EOS_IBUG_TO_BFM2009
    from morphable.convert.bfm2017 import EOS_IBUG_TO_BFM2017_NOMOUTH
    mapping, n = ((EOS_IBUG_TO_BFM2009, 53490) if fmt == "bfm2009" else (EOS_IBUG_TO_BFM2017_NOMOUTH, 53149))
    pinned = {k - 1: v for k, v in mapping.items()}
    face = fx.make_face(n, k_identity=2, k_expression=1, k_albedo=1, pinned=pinned)
    if fmt == "bfm2009":
        source = fx.write_bfm2009(face, tmp_path)
    else:
        source = fx.write_bfm2017(face, tmp_path / "model2017-1_bfm_nomouth.h5")
    m = convert(source, fmt)
    assert m.num_vertices == n and all(m.landmarks[i].item() == v for i, v in pinned.items())
    assert f"{len(pinned)} of 68 from eos share/ibug_to_bfm" in m.metadata["description"]
    assert_outward(m)
