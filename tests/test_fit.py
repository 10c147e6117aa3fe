"""Fitting: the closed-form pose, the crop, a synthetic round trip, the CLI on real and bad input."""

import json
import math
import shutil
from pathlib import Path

import imageio.v3 as iio
import kornia
import numpy as np
import pytest
import torch
import trimesh
from typer.testing import CliRunner

import losses
import render
from cli import app
from cli.fitting.crop import Crop, crop_image
from cli.files import load_image, output_names, read_landmarks
from cli.fitting import FitConfig, FitDiverged, fit, solve_pose
from cli.fitting.benchmark import synthetic_face
from morphable import MorphableModel, Parameters

ROOT = Path(__file__).resolve().parents[1]
ASTRONAUT = ROOT / "assets" / "astronaut.png"
SHARED_FACES = ROOT.parent / "shared" / "data" / "faces"
runner = CliRunner()
QUICK = ["--steps", "10", "--landmark-steps", "40"]


@pytest.fixture(scope="module")
def default_model():
    return MorphableModel.from_file(ROOT / "assets" / "morph_face.safetensors")


def test_solve_pose_recovers_a_known_pose():
    g = torch.Generator().manual_seed(0)
    points = torch.randn(68, 3, generator=g) * 50
    rotation = kornia.geometry.conversions.axis_angle_to_rotation_matrix(torch.tensor([[0.2, -0.5, 0.1]]))
    projected = render.orthographic_project(points[None], rotation, torch.tensor([[100.0, 80.0]]),
                                            torch.tensor([1.7]))[0, :, :2]
    r, t, s = solve_pose(points, projected, torch.ones(68))
    torch.testing.assert_close(r, rotation[0], atol=1e-4, rtol=0)
    torch.testing.assert_close(t, torch.tensor([100.0, 80.0]), atol=1e-3, rtol=0)
    assert s == pytest.approx(1.7, rel=1e-5)


def test_lighting_solve_recovers_a_known_light(default_model):
    from cli.fitting.stages import solve_lighting
    from cli.fitting.scene import FaceScene

    scene = FaceScene(default_model, 128)
    truth = Parameters.sample_prior(default_model.parameter_sizes, 2, torch.Generator().manual_seed(0))
    truth.pose[:, :3] *= 0.3
    truth.pose[:, 3:5], truth.pose[:, 6] = 64.0, 0.5
    truth.lighting[:, [0, 9, 18]] += torch.tensor([[0.8, 0.7, 0.6]])  # coloured light, not what the prior pulls to
    with torch.no_grad():
        image = scene(truth)["image"]
    start = truth.map(lambda t: t.clone())
    start.lighting = torch.zeros_like(truth.lighting)
    lighting, rendered, used = solve_lighting(scene, start, image, prior_weight=0.0)
    torch.testing.assert_close(lighting, truth.lighting, atol=0.01, rtol=0)
    error = ((rendered - image) * used).abs().sum() / (3 * used.sum())  # antialiased edges inside the face differ
    assert used.sum() > 0.2 * 128 * 128 and error < 2e-3, error
    pulled, _, _ = solve_lighting(scene, start, image, prior_weight=1.0)  # the prior pulls towards white light
    spread = lighting.reshape(2, 3, 9).std(1).sum()
    assert pulled.reshape(2, 3, 9).std(1).sum() < 0.5 * spread


def test_crop_maps_points_and_pixels_consistently():
    image = torch.zeros(3, 100, 120)
    image[:, 40, 70] = 1.0  # pixel (row 40, col 70): centre (70.5, 40.5)
    crop = Crop(origin_x=50.0, origin_y=20.0, scale=2.0, size=64)
    out = crop_image(image, crop)[0, 0]
    expected = crop.to_crop(torch.tensor([[70.5, 40.5]]))[0]  # (41, 41): a corner between 4 pixels
    rows, cols = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    centroid = torch.stack([(cols * out).sum(), (rows * out).sum()]) / out.sum() + 0.5  # continuous (x, y)
    torch.testing.assert_close(centroid, expected, atol=0.01, rtol=0)
    torch.testing.assert_close(crop.to_original(crop.to_crop(torch.tensor([[3.0, 4.0]]))), torch.tensor([[3.0, 4.0]]))


@pytest.mark.parametrize("origin", [(130.0, 95.5), (-40.0, 250.0), (900.0, 900.0)],
                         ids=["inside", "across-the-border", "outside"])
def test_downscaled_crop_blurs_only_what_it_reads(origin):
    """The crop blurs a window of the photo around what it samples: the same pixels as blurring
    the whole photo first (inside, across its border, and wholly outside it)."""
    image = torch.rand(3, 300, 400, generator=torch.Generator().manual_seed(0))
    crop = Crop(origin_x=origin[0], origin_y=origin[1], scale=0.3, size=48)
    sigma = 0.5 / crop.scale
    k = int(2 * math.ceil(2 * sigma) + 1)
    whole = kornia.filters.gaussian_blur2d(image[None], (k, k), (sigma, sigma), border_type="replicate")
    s = crop.scale
    m = torch.tensor([[[s, 0.0, -s * crop.origin_x + 0.5 * s - 0.5], [0.0, s, -s * crop.origin_y + 0.5 * s - 0.5]]])
    expected = kornia.geometry.transform.warp_affine(whole, m, (48, 48), padding_mode="border", align_corners=True)
    torch.testing.assert_close(crop_image(image, crop), expected, atol=1e-5, rtol=0)


def test_synthetic_round_trip(default_model):
    image, landmarks = synthetic_face(default_model, seed=0)
    result = fit(image, landmarks, default_model, FitConfig())
    error = (result.fitted_landmarks - landmarks).norm(dim=-1)
    assert error.mean() <= 0.5
    psnr = losses.masked_psnr(result.crop_render[None], result.crop_image[None], result.crop_mask[None])
    assert psnr.item() >= 30.0
    assert [s.name for s in result.stages] == ["landmark", "photometric"]


def test_divergence_is_reported(default_model):
    image, landmarks = synthetic_face(default_model, seed=0)
    image[:, 100:120, 100:120] = float("nan")
    with pytest.raises(FitDiverged, match="photometric stage at step 0"):
        fit(image, landmarks, default_model, FitConfig(landmark_steps=5, photometric_steps=5))


def _one_line_error(result, words):
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("morph: error: ") and words in lines[0], result.stderr
    assert "Traceback" not in result.output


def test_fit_cli_on_the_astronaut(tmp_path):
    pytest.importorskip("dlib")
    result = runner.invoke(app, ["fit", str(ASTRONAUT), "--out", str(tmp_path)] + QUICK)
    assert result.exit_code == 0, result.output
    out = tmp_path / "astronaut"
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["params.safetensors", "mesh.ply", "mesh.obj", "mesh.mtl", "mesh.glb", "texture.png", "albedo.png",
         "overlay.png", "landmarks.json", "report.json", "loss_curve.svg", "report.html"])
    assert iio.imread(out / "texture.png").shape == iio.imread(out / "albedo.png").shape == (1024, 1024, 3)
    textured = trimesh.load(out / "mesh.obj", process=False)  # finds mesh.mtl and texture.png beside it
    assert textured.visual.material.image.size == (1024, 1024)
    overlay = iio.imread(out / "overlay.png")
    assert overlay.shape == (512, 512, 3)
    assert not np.array_equal(overlay, iio.imread(ASTRONAUT))
    marks = json.loads((out / "landmarks.json").read_text())
    fitted, target = np.array(marks["fitted"]), np.array(marks["target"])
    assert fitted.shape == target.shape == (68, 2)
    assert np.linalg.norm(fitted - target, axis=1).mean() < 8.0  # pixels, 512 px image
    report = json.loads((out / "report.json").read_text())
    assert report["backend"] == "torch" and [s["name"] for s in report["stages"]] == ["landmark", "photometric"]
    assert report["landmarks_source"] == "detector"
    mesh = trimesh.load(out / "mesh.ply", process=False)
    assert len(mesh.vertices) == MorphableModel.from_file(ROOT / "assets" / "morph_face.safetensors").num_vertices
    params = Parameters.load(out / "params.safetensors")
    assert params.identity.shape == (1, 80) and params.pose.shape == (1, 7)
    assert not list(tmp_path.glob(".*"))  # no temporary leftovers


def test_fit_with_a_landmark_file_and_odd_image_formats(tmp_path):
    pytest.importorskip("dlib")
    astronaut = iio.imread(ASTRONAUT)
    gray = tmp_path / "gray.png"
    iio.imwrite(gray, (astronaut.mean(-1)).astype(np.uint8))
    rgba = tmp_path / "rgba.png"
    iio.imwrite(rgba, np.concatenate([astronaut, np.full(astronaut.shape[:2] + (1,), 200, np.uint8)], -1))
    deep = tmp_path / "deep.png"  # 16-bit grayscale (Pillow writes no 16-bit RGB PNG)
    iio.imwrite(deep, astronaut.mean(-1).astype(np.uint8).astype(np.uint16) * 257)
    for path in (gray, rgba, deep):
        image = load_image(path)
        assert image.shape == (3, 512, 512) and image.dtype == torch.float32 and 0 <= image.min() <= image.max() <= 1
    torch.testing.assert_close(load_image(deep), load_image(gray))
    result = runner.invoke(app, ["fit", str(gray), str(rgba), str(deep), "-o", str(tmp_path / "out")] + QUICK)
    assert result.exit_code == 0, result.output
    assert "3 of 3 images fitted" in result.stdout
    # A .pts file (1-based) for one image.
    marks = json.loads((tmp_path / "out" / "gray" / "landmarks.json").read_text())["target"]
    pts = tmp_path / "gray.pts"
    pts.write_text("version: 1\nn_points: 68\n{\n" + "".join(f"{x + 0.5} {y + 0.5}\n" for x, y in marks) + "}\n")
    torch.testing.assert_close(read_landmarks(pts), torch.tensor(marks), atol=1e-4, rtol=0)
    result = runner.invoke(app, ["fit", str(gray), "-l", str(pts), "-o", str(tmp_path / "out2")] + QUICK)
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "out2" / "gray" / "report.json").read_text())["landmarks_source"] == "annotation"


@pytest.mark.parametrize("orientation,turns", [(3, 2), (6, 1), (8, -1)])
def test_photos_are_read_upright_by_their_exif_orientation(tmp_path, orientation, turns):
    from PIL import Image

    upright = iio.imread(ASTRONAUT)[:, 56:456]  # 512 x 400: a turn shows in the shape
    stored = np.ascontiguousarray(np.rot90(upright, turns))  # EXIF 6: the camera stored it turned 90 deg CCW
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / "phone.jpg"
    Image.fromarray(stored).save(path, exif=exif.tobytes(), quality=95)
    image = load_image(path)
    assert image.shape == (3, 512, 400)
    assert (image - torch.from_numpy(upright).permute(2, 0, 1) / 255).abs().mean() < 0.01  # JPEG's loss only


def test_cmyk_jpeg_is_read_as_rgb(tmp_path):
    from PIL import Image

    path = tmp_path / "print.jpg"
    Image.fromarray(iio.imread(ASTRONAUT)).convert("CMYK").save(path, quality=95)
    assert iio.imread(path).shape[-1] == 4  # stored as C, M, Y, K
    assert (load_image(path) - load_image(ASTRONAUT)).abs().mean() < 0.01


def test_a_still_gif_is_a_photo_and_an_animated_one_a_video(tmp_path):
    from cli.video import is_video

    astronaut = iio.imread(ASTRONAUT)
    still, animated = tmp_path / "still.gif", tmp_path / "animated.gif"
    iio.imwrite(still, astronaut)
    iio.imwrite(animated, np.stack([astronaut, astronaut[::-1]]), loop=0)
    assert not is_video(still) and is_video(animated) and is_video(tmp_path / "clip.mp4")
    assert (load_image(still) - load_image(ASTRONAUT)).abs().mean() < 0.03  # GIF's 256-colour palette


def test_huge_image_is_downscaled_for_detection(tmp_path):
    pytest.importorskip("dlib")
    huge = tmp_path / "huge.jpg"
    big = np.kron(iio.imread(ASTRONAUT), np.ones((6, 6, 1), np.uint8))  # 3072 x 3072
    iio.imwrite(huge, big)
    result = runner.invoke(app, ["fit", str(huge), "-o", str(tmp_path / "out"), "--steps", "0",
                                 "--landmark-steps", "20"])
    assert result.exit_code == 0, result.output
    fitted = np.array(json.loads((tmp_path / "out" / "huge" / "landmarks.json").read_text())["target"])
    assert 6 * 150 < fitted[:, 0].mean() < 6 * 350  # the face, in full-resolution pixels


def _bad_inputs(tmp_path):
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    blank = tmp_path / "blank.png"
    iio.imwrite(blank, np.full((200, 200, 3), 128, np.uint8))
    tiny = tmp_path / "tiny.png"
    iio.imwrite(tiny, np.full((8, 8, 3), 128, np.uint8))
    few = tmp_path / "few.json"
    few.write_text(json.dumps([[1.0, 2.0]] * 67))
    nan = tmp_path / "nan.npy"
    points = np.random.default_rng(0).uniform(100, 300, (68, 2))
    points[5, 1] = np.nan
    np.save(nan, points)
    elsewhere = tmp_path / "elsewhere.npy"  # a face's landmarks, 5000 px off the 512 px photo
    np.save(elsewhere, np.random.default_rng(0).uniform(5100, 5300, (68, 2)))
    point = tmp_path / "point.json"
    point.write_text(json.dumps([[200.0, 200.0]] * 68))
    output = tmp_path / "landmarks.json"  # the shape of morph's own output
    output.write_text(json.dumps({"target": [[200.0, 200.0]] * 68, "fitted": [[200.0, 200.0]] * 68}))
    return {
        "missing file": ([str(tmp_path / "missing.png")], "no such file"),
        "not an image": ([str(text)], "cannot read the image"),
        "no face": ([str(blank)], "no face found"),
        "tiny image": ([str(tiny)], "image too small"),
        "67 landmarks": ([str(ASTRONAUT), "-l", str(few)], "expected 68 landmarks"),
        "NaN landmarks": ([str(ASTRONAUT), "-l", str(nan)], "NaN"),
        "unknown landmark format": ([str(ASTRONAUT), "-l", str(text)], "unknown landmark format"),
        "landmarks off the image": ([str(ASTRONAUT), "-l", str(elsewhere)], "elsewhere.npy: no landmark lies on"),
        "landmarks on one point": ([str(ASTRONAUT), "-l", str(point)], "point.json: the landmarks span less"),
        "morph's landmarks.json": ([str(ASTRONAUT), "-l", str(output)], 'copy one into "landmarks"'),
    }


@pytest.mark.parametrize("case", ["missing file", "not an image", "no face", "tiny image", "67 landmarks",
                                  "NaN landmarks", "unknown landmark format", "landmarks off the image",
                                  "landmarks on one point", "morph's landmarks.json"])
def test_bad_input_is_one_line_and_leaves_nothing(tmp_path, case):
    if case == "no face":
        pytest.importorskip("dlib")
    args, words = _bad_inputs(tmp_path)[case]
    out = tmp_path / "out"
    result = runner.invoke(app, ["fit", *args, "-o", str(out)] + QUICK)
    _one_line_error(result, words)
    assert not out.exists() or not any(out.iterdir())


def test_out_must_be_a_folder_and_eval_needs_annotations(tmp_path):
    taken = tmp_path / "taken"
    taken.write_text("a file")
    for command in ("fit", "predict"):
        _one_line_error(runner.invoke(app, [command, str(ASTRONAUT), "-o", str(taken)]), "a file is there")
    _one_line_error(runner.invoke(app, ["eval", str(tmp_path)]), "no images with .pts landmarks")


def test_one_failure_does_not_stop_the_rest(tmp_path):
    pytest.importorskip("dlib")
    blank = tmp_path / "blank.png"
    iio.imwrite(blank, np.full((200, 200, 3), 128, np.uint8))
    out = tmp_path / "out"
    result = runner.invoke(app, ["fit", str(blank), str(ASTRONAUT), "-o", str(out)] + QUICK)
    assert result.exit_code == 1
    assert "no face found" in result.stderr
    assert "1 of 2 images fitted" in result.stdout
    assert sorted(p.name for p in out.iterdir()) == ["astronaut", "index.html"]
    index = (out / "index.html").read_text()
    assert 'href="astronaut/report.html"' in index and "no face found" in index and "1 of 2 images fitted" in index


def test_output_folders_are_unique_when_inputs_share_a_stem():
    names = output_names([Path("a/face.jpg"), Path("a/face.png"), Path("b/face.png"), Path("b/other.png"),
                          Path("c/face_jpg.png")])
    assert names == ["face_jpg_1", "face_png_1", "face_png_2", "other", "face_jpg_2"]
    assert output_names([Path("x.png"), Path("x.png")]) == ["x_png_1", "x_png_2"]


def test_two_photos_with_one_name_keep_both_fits(tmp_path):
    for folder in ("d1", "d2"):
        (tmp_path / folder).mkdir()
        shutil.copy(ASTRONAUT, tmp_path / folder / "face.png")
    out = tmp_path / "out"
    result = runner.invoke(app, ["fit", str(tmp_path / "d1" / "face.png"), str(tmp_path / "d2" / "face.png"),
                                 "-o", str(out)] + QUICK)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["face_png_1", "face_png_2", "index.html"]
    for k, folder in ((1, "d1"), (2, "d2")):
        assert json.loads((out / f"face_png_{k}" / "report.json").read_text())["source"] == str(tmp_path / folder /
                                                                                                 "face.png")
    index = (out / "index.html").read_text()
    assert 'href="face_png_1/report.html"' in index and 'href="face_png_2/report.html"' in index


@pytest.mark.skipif(not (SHARED_FACES / "image_0010.png").is_file(), reason="needs ../shared/data/faces")
def test_eval_on_an_annotated_folder(tmp_path):
    pytest.importorskip("dlib")
    folder = tmp_path / "faces"
    folder.mkdir()
    for name in ("image_0010.png", "image_0010.pts"):  # a temporary copy, outside the repository
        shutil.copy(SHARED_FACES / name, folder / name)
    (folder / "unannotated.png").write_bytes((folder / "image_0010.png").read_bytes())
    result = runner.invoke(app, ["eval", str(folder), "--json", str(tmp_path / "eval.json")] + QUICK)
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "eval.json").read_text())
    assert data["evaluated"] == 1 and len(data["images"]) == 1
    row = data["images"][0]
    assert 0 < row["fit_nme_bbox"] < 0.06 and 0 < row["detector_nme_bbox"] < 0.06
    assert 0 < row["fit_outline_nme_bbox"] < 0.06 and data["detector"] == "mediapipe"
    assert "mean (1)" in result.stdout


def test_help_has_examples():
    for command in ("fit", "eval"):
        result = runner.invoke(app, [command, "--help"])
        assert result.exit_code == 0 and "Example: morph " + command in result.stdout
