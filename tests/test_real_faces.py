"""Real faces into training: templates -> 68, prepare --fit (targets, baked albedo, cache), face
profiling (labels exact), the texture bank, and pretrained trunks."""

import json
import math
import shutil
from pathlib import Path

import kornia
import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

import render
from cli import app
from cli.defaults import load_model
from cli.detect import detect_landmarks
from cli.files import load_image
from cli.fitting.crop import make_crop
from cli.fitting.scene import FaceScene
from cli.training import Dataset, ParameterRegressor, synthesize
from cli.training.prepare import fit_records, prepare_dataset, read_fit_record
from cli.training.profile import ProfileConfig, _profiled, head_pivot, turned
from cli.training.synth import SynthConfig
from cli.training.templates import load_template_map, read_template, template_landmarks
from cli.training.textured import TexturedFace
from cli.training.trunks import EfficientNetLite0, TrunkFileError, mediapipe_mesh_trunk, pretrained_state
from morphable import Parameters

ROOT = Path(__file__).resolve().parents[1]
LONDON = ROOT.parent / "shared" / "data" / "train" / "frl-london"
runner = CliRunner()


@pytest.fixture(scope="module")
def face_model():
    return load_model()


def _write_map(path: Path, entries: list) -> Path:
    path.write_text(json.dumps({"ibug68": entries}))
    return path


def _write_template(path: Path, points: np.ndarray) -> Path:
    lines = [str(len(points))] + [f"{x}\t{y}" for x, y in points] + ["3", "0", "2", "0 1"]  # + line definitions
    path.write_text("\n".join(lines) + "\n")
    return path


# -- templates ---------------------------------------------------------------------------------------
def test_template_map_gives_the_68_of_a_known_template(tmp_path):
    # iBUG point k: x the mean of template points k and k+1, y that of point k counted twice and k+2 once.
    mapping = load_template_map(_write_map(tmp_path / "m_to_ibug68.json",
                                           [{"x": [k, k + 1], "y": [k, k, k + 2]} for k in range(68)]))
    assert mapping.points == 70
    template = np.stack([10.0 * np.arange(72), 100.0 + 3 * np.arange(72)], 1)  # 2 points more than the map uses
    points = template_landmarks(_write_template(tmp_path / "face.tem", template), mapping)
    k = np.arange(68)
    np.testing.assert_allclose(points[:, 0].numpy(), 10 * k + 5, rtol=0, atol=1e-4)
    np.testing.assert_allclose(points[:, 1].numpy(), 100 + 3 * (3 * k + 2) / 3, rtol=0, atol=1e-4)


@pytest.mark.skipif(not (LONDON / "neutral" / "001_03.tem").is_file(), reason="needs ../shared/data/train")
def test_london_template_lands_on_the_face():
    """The London set's map on a real template: the inner 51 points lie on the detector's (measured 1.8 % of
    the face size apart; a map that swapped left and right, or x and y, is 10-40 % off)."""
    mapping = load_template_map(LONDON / "frl_to_ibug68.json")
    photo = LONDON / "neutral" / "001_03.jpg"
    labels = template_landmarks(photo.with_suffix(".tem"), mapping)
    detected, _ = detect_landmarks(load_image(photo))
    size = (labels.amax(0) - labels.amin(0)).prod().sqrt()
    assert (labels[17:] - detected[17:]).norm(dim=-1).mean() < 0.03 * size
    assert labels[36, 0] < labels[45, 0]  # image-left eye first, as 300-W


def test_bad_templates_and_maps_are_one_line_errors(tmp_path):
    mapping = load_template_map(_write_map(tmp_path / "m_to_ibug68.json", [{"x": [k], "y": [k]} for k in range(68)]))
    short = _write_template(tmp_path / "short.tem", np.zeros((40, 2)))
    with pytest.raises(Exception, match=r"short.tem: 40 template points; the map .* needs 68"):
        template_landmarks(short, mapping)
    (tmp_path / "garbled.tem").write_text("12\n1 2\nthree four\n")
    with pytest.raises(Exception, match="garbled.tem: not a template"):
        read_template(tmp_path / "garbled.tem")
    with pytest.raises(Exception, match="expected 68"):
        load_template_map(_write_map(tmp_path / "few.json", [{"x": [0], "y": [0]}] * 3))
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(Exception, match="bad.json: not a template map"):
        load_template_map(tmp_path / "bad.json")


def test_prepare_reads_templates_and_counts_bad_ones(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    _write_map(tmp_path / "set_to_ibug68.json", [{"x": [k], "y": [k]} for k in range(68)])  # one folder up
    for name in ("good", "short"):
        shutil.copy(ROOT / "assets" / "astronaut.png", photos / f"{name}.png")
    points = np.stack([200 + 2.0 * (np.arange(68) % 17), 150 + 3.0 * (np.arange(68) // 17)], 1)
    _write_template(photos / "good.tem", points)
    _write_template(photos / "short.tem", points[:50])
    summary = prepare_dataset([photos / "good.png", photos / "short.png"], tmp_path / "data", 128)
    assert summary.added == 1 and len(summary.failed) == 1 and "short.tem: 50 template points" in summary.failed[0][1]
    assert "short.tem" in (tmp_path / "data" / "prepare.log").read_text()
    shard = tmp_path / "data" / "shard-00000.safetensors"
    labels = torch.from_numpy(points).float()
    torch.testing.assert_close(load_file(str(shard))["landmarks"][0], make_crop(labels, 128).to_crop(labels))
    with open(shard, "rb") as f:  # the shard says what its labels are
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    assert json.loads(header["__metadata__"]["labels"]) == ["template"]
    index = json.loads((tmp_path / "data" / "dataset.json").read_text())
    assert "jaw on the visible outline" in index["labels"]["template"]


# -- prepare --fit ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fitted(tmp_path_factory, face_model):
    """The astronaut prepared with a fit: (dataset folder, summary)."""
    folder = tmp_path_factory.mktemp("fitted")
    photos = folder / "photos"
    photos.mkdir()
    shutil.copy(ROOT / "assets" / "astronaut.png", photos / "astronaut.png")
    summary = prepare_dataset([photos / "astronaut.png"], folder / "data", 128, fit_model=face_model)
    return folder / "data", summary


def test_prepare_fit_keeps_targets_and_the_baked_albedo(fitted, face_model):
    data, summary = fitted
    assert summary.added == 1 and summary.fitted == 1 and summary.teaching == 1
    record = read_fit_record(fit_records(data)[0])
    assert record["albedo"].shape == (3, 256, 256) and record["albedo"].dtype == torch.uint8
    assert float(record["agreement"]) < 0.04 and record["label"] == "detector"
    shard = load_file(str(data / "shard-00000.safetensors"))
    assert shard["parameter_weights"].tolist() == [1.0]
    # The sample's labels are the fitted 68 (they agree with the detector's), in the crop the labels make,
    # and its parameters put the model's landmarks exactly there.
    crop = make_crop(record["fitted"], 128)
    torch.testing.assert_close(shard["landmarks"][0], crop.to_crop(record["fitted"]), atol=1e-4, rtol=0)
    params = Parameters(**{g: shard["params_" + g] for g in ("identity", "expression", "albedo", "lighting", "pose")})
    torch.testing.assert_close(FaceScene(face_model, 128).landmarks(params)[0], shard["landmarks"][0], atol=2e-3,
                               rtol=0)
    # The baked albedo is the photo's: the face's skin is not the model's mean albedo's grey-pink.
    skin = record["albedo"][:, 160:200, 100:156].float().mean((1, 2)) / 255
    assert skin[0] > skin[2] + 0.1  # warm skin


def test_prepare_fit_resumes_from_its_cache(fitted, face_model, tmp_path):
    data, _ = fitted
    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    index = json.loads((copy / "dataset.json").read_text())
    index.update(done=[], shards=[], count=0)  # as if interrupted after the fit, before the shard
    (copy / "dataset.json").write_text(json.dumps(index))
    (copy / "shard-00000.safetensors").unlink()
    summary = prepare_dataset([Path(read_fit_record(fit_records(data)[0])["source"])], copy, 128,
                              fit_model=face_model)
    assert summary.added == 1 and summary.fitted == 0 and summary.fits_reused == 1


# -- profiling ----------------------------------------------------------------------------------------
def _where_uv_is(image_uv: torch.Tensor, covered: torch.Tensor, uv: torch.Tensor) -> torch.Tensor | None:
    """The sub-pixel image position ``[2]`` (morph's pixel convention) where the rendered texture coordinates
    ``image_uv [2,H,W]`` equal ``uv [2]``: the fully covered pixel nearest in UV, then the local linear map
    fitted (least squares) to the pixels around it on the same UV island; None if none is within 1.5 px."""
    distance = (image_uv - uv[:, None, None]).norm(dim=0)
    distance[~covered] = float("inf")
    i, j = divmod(int(distance.argmin()), distance.shape[1])
    h, w = distance.shape
    rows, offsets = [], []
    for di in range(-2, 3):
        for dj in range(-2, 3):
            a, b = i + di, j + dj
            if (di or dj) and 0 <= a < h and 0 <= b < w and covered[a, b]:
                change = image_uv[:, a, b] - image_uv[:, i, j]
                if change.norm() < 0.02:  # the same island (UV islands lie far apart in the layout)
                    rows.append(change)
                    offsets.append(torch.tensor([float(dj), float(di)]))
    if len(rows) < 3:
        return None
    # change = jacobian @ offset for every neighbour: least squares for the jacobian (2x2).
    jacobian = torch.linalg.lstsq(torch.stack(offsets).double(), torch.stack(rows).double()).solution.T
    step = torch.linalg.solve(jacobian, (uv - image_uv[:, i, j]).double()).float()
    return torch.tensor([j + 0.5, i + 0.5]) + step if step.norm() < 1.5 else None


def test_a_profiled_samples_rendered_landmarks_land_on_its_labels(face_model):
    """Where the sample's render shows each landmark vertex (found through a texture that is its own
    texture coordinates) is where its labels put it: within 0.5 px. Measured over these three poses
    (yaw, pitch, roll up to 60, 25, 20 degrees): at most 0.34 px, which includes the error of
    finding the point (a linear map fitted to 5x5 pixels across triangles)."""
    model = face_model
    photo = torch.full((3, 300, 400), 0.5)
    fitted_params = Parameters.neutral(model.parameter_sizes, 1)  # neutral light: the albedo x 0.8 everywhere
    fitted_params.pose[:, 3:5] = torch.tensor([200.0, 150.0])
    fitted_params.pose[:, 6] = 1.0
    config = ProfileConfig(yaw=60.0, pitch=25.0, roll=20.0, own_background=0.0, occluder=0.0, relight=0.0)
    synth = SynthConfig(yaw=config.yaw, pitch=config.pitch, roll=config.roll)
    face = TexturedFace(model)
    size = 256
    ys, xs = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    ramp = torch.stack([xs / size, 1 - ys / size, torch.zeros_like(xs)])  # (u, v): bilinear sampling is exact
    uv_tri = model.uv_triangles if model.uv_triangles is not None else model.triangles
    checked = 0
    for seed in range(3):
        g = torch.Generator().manual_seed(seed)
        image8, labels, params = _profiled(model, face, {"params": fitted_params, "agreement": "0.0"}, photo, ramp, g,
                                           config, synth, _Plain(), 224, head_pivot(model))
        q = Parameters(**{k: v[None] for k, v in params.items()})
        torch.testing.assert_close(FaceScene(model, 224).landmarks(q)[0], labels, atol=1e-3, rtol=0)
        image, coverage, _ = face(q, ramp, 224)
        image_uv, covered = image[:2] / 0.8, coverage[0] > 0.999
        assert ((image8.float() / 255 - image.clamp(0, 1) - (1 - coverage) * 0.3).abs().max() < 0.01)
        # Which landmark vertices the render shows: not behind the depth buffer at their pixel.
        vertices, _ = model(q.identity, q.expression)
        scene = FaceScene(model, 224)
        rotation = kornia.geometry.conversions.axis_angle_to_rotation_matrix(q.rotation)
        depth = render.Renderer(model.triangles)(vertices, torch.ones_like(vertices), q.lighting, scene.camera, rotation,
                                                 q.translation, q.scale, with_depth=True).depth[0, 0]
        own_depth = scene.camera.view_depth(vertices, rotation, q.translation, q.scale)[0]
        for point in range(17, 68):  # the inner points (the jaw's are often hidden at these poses)
            vertex = int(model.landmarks[point])
            x, y = labels[point].long().tolist()
            if not (0 <= x < 224 and 0 <= y < 224) or own_depth[vertex] < depth[y, x] - 0.5:  # mm
                continue  # hidden (behind the nose, an eyelid, the cheek)
            corners = (model.triangles == vertex).nonzero()
            found = [_where_uv_is(image_uv, covered, uv) for uv in model.uv[uv_tri[corners[:, 0], corners[:, 1]]]]
            found = [f for f in found if f is not None]
            if not found:
                continue  # on a silhouette (the nose's underside): no pixel shows it unambiguously
            error = min((f - labels[point]).norm() for f in found)
            assert error < 0.5, (seed, point, error)
            checked += 1
    assert checked >= 75  # of the 3 x 51: about 30 per pose are in sight


class _Plain:
    def draw(self, g):
        return torch.full((3, 224, 224), 0.3)


def test_turning_keeps_the_head_pivot_in_place(face_model):
    p = Parameters.neutral(face_model.parameter_sizes, 1)
    p.pose[:, 3:5] = torch.tensor([60.0, 70.0])
    p.pose[:, 6] = 0.5
    q = turned(face_model, p, torch.tensor([[0.0, math.radians(80), 0.0]]))
    scene = FaceScene(face_model, 128)
    pivot = head_pivot(face_model)[None, None]
    torch.testing.assert_close(scene.project(pivot, q), scene.project(pivot, p), atol=1e-4, rtol=0)
    assert (scene.landmarks(q) - scene.landmarks(p)).norm(dim=-1).mean() > 10  # the face itself moved


def test_profile_command_writes_exact_labels_and_skips_disagreeing_fits(fitted, face_model, tmp_path):
    data, _ = fitted
    out = tmp_path / "profiled"
    result = runner.invoke(app, ["profile", str(data), "--out", str(out), "--per-face", "3", "--resolution", "128",
                                 "--backgrounds", "procedural"])
    assert result.exit_code == 0, result.output
    assert "3 samples from 1 fitted photos" in result.stdout
    shard = load_file(str(out / "shard-00000.safetensors"))
    params = Parameters(**{g: shard["params_" + g] for g in ("identity", "expression", "albedo", "lighting", "pose")})
    torch.testing.assert_close(FaceScene(face_model, 128).landmarks(params), shard["landmarks"], atol=1e-3, rtol=0)
    yaw = [abs(r[1]) for r in params.rotation.tolist()]
    assert max(yaw) > 0.05  # turned
    again = runner.invoke(app, ["profile", str(data), "--out", str(out), "--per-face", "3", "--resolution", "128",
                                "--backgrounds", "procedural"])
    assert "0 samples from 0 fitted photos" in again.stdout
    assert len(Dataset([out])) == 3


def test_synth_wears_the_texture_bank(fitted, face_model, tmp_path):
    data, _ = fitted
    bank = fit_records(data)
    plain, worn = tmp_path / "plain", tmp_path / "worn"
    synthesize(face_model, plain, 4, seed=2, resolution=128)
    synthesize(face_model, worn, 4, seed=2, resolution=128, config=SynthConfig(texture=1.0), textures=bank)
    a, b = load_file(str(plain / "shard-00000.safetensors")), load_file(str(worn / "shard-00000.safetensors"))
    torch.testing.assert_close(a["landmarks"], b["landmarks"])  # the same faces and poses
    assert not torch.equal(a["images"], b["images"])
    fitted_albedo = read_fit_record(bank[0])["params"].albedo[0]
    torch.testing.assert_close(b["params_albedo"], fitted_albedo.expand(4, -1))


# -- trunks -------------------------------------------------------------------------------------------
def test_mediapipe_trunk_reads_out_mediapipes_mesh():
    """The trunk's mesh features, through MediaPipe's own last layer, give MediaPipe's 468 points."""
    from cli.detect.mediapipe.weights import _load_cpu

    graph = _load_cpu("face_landmark")
    trunk = mediapipe_mesh_trunk()
    crops = torch.rand(2, 3, 192, 192)
    with torch.no_grad():
        mesh, _ = graph(crops)
        features = trunk(crops)
    last = graph.program["ops"][-1]
    assert last["in"][0] == 207
    weight, bias = getattr(graph, last["in"][1]), getattr(graph, last["in"][2])
    readout = torch.nn.functional.conv2d(features[:, :288].reshape(2, 3, 3, 32).permute(0, 3, 1, 2), weight, bias)
    torch.testing.assert_close(readout.flatten(1), mesh.flatten(1), atol=1e-3, rtol=1e-4)
    assert all(p.requires_grad for p in trunk.parameters())


def test_networks_with_each_trunk_round_trip(tmp_path, face_model):
    for backbone in ("efficientnet_lite0", "mediapipe_mesh"):
        net = ParameterRegressor.for_model(face_model, backbone, 128)
        torch.nn.init.normal_(net.heads["pose"].weight, std=0.01)
        net.eval()
        path = tmp_path / f"{backbone}.safetensors"
        net.save(path)
        again = ParameterRegressor.from_file(path, face_model).eval()
        images = torch.rand(2, 3, 128, 128)
        assert torch.equal(again(images).to_flat(), net(images).to_flat()), backbone
    assert again.trunk_origin.startswith("MediaPipe's face mesh")


def test_a_trunk_file_that_does_not_fit_is_one_clear_error(tmp_path, face_model):
    trunk = EfficientNetLite0()
    state = {EfficientNetLite0.key_of(k): torch.randn_like(v) if v.is_floating_point() else v
             for k, v in trunk.state_dict().items() if not k.endswith("num_batches_tracked")}
    good = tmp_path / "good.safetensors"
    save_file(state, str(good))
    net = ParameterRegressor.for_model(face_model, "efficientnet_lite0", 128, pretrained=good)
    assert torch.equal(net.backbone._conv_stem[1].weight, state["_conv_stem.weight"])
    assert net.trunk_origin == f"started from {good}"
    wrong = dict(state, **{"_blocks.3._project_conv.weight": torch.zeros(7, 144, 1, 1)})
    save_file(wrong, str(tmp_path / "wrong.safetensors"))
    with pytest.raises(TrunkFileError, match=r"wrong.safetensors: tensor '_blocks.3._project_conv.weight' has shape "
                                             r"\[7, 144, 1, 1\], the trunk needs \[40, 144, 1, 1\]"):
        pretrained_state(trunk, tmp_path / "wrong.safetensors", EfficientNetLite0.key_of)
    (tmp_path / "cut.safetensors").write_bytes(good.read_bytes()[:5000])
    with pytest.raises(TrunkFileError, match="cut.safetensors: not a readable trunk file"):
        ParameterRegressor.for_model(face_model, "efficientnet_lite0", 128, pretrained=tmp_path / "cut.safetensors")
    missing = {k: v for k, v in state.items() if "_blocks.15" not in k}
    save_file(missing, str(tmp_path / "other.safetensors"))
    with pytest.raises(TrunkFileError, match="other.safetensors: not weights of this trunk"):
        pretrained_state(trunk, tmp_path / "other.safetensors", EfficientNetLite0.key_of)
    with pytest.raises(Exception, match="resnet18 has no published weights"):
        ParameterRegressor.for_model(face_model, "resnet18", 128, pretrained=True)
