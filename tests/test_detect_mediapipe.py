"""The MediaPipe detector port: TFLite reader, anchors, NMS, parity with the real MediaPipe, odd photos.

Parity references (``tests/data/mediapipe_reference.json``) are MediaPipe 0.10.21's own outputs
on the astronaut photo, turned, mirrored and grey (``tests/data/make_mediapipe_reference.py``).
Tolerances: boxes within 1.5 px, detection keypoints within 2.5 px, scores within 0.01, mesh
points within 0.3 px on average and 1.5 px at most (measured here: boxes 0.5 px, keypoints 1.8 px
(full range), mesh 0.01-0.1 px; the rest is OpenCV's fixed-point warp against our float one). The networks come from the mediapipe wheel on PyPI:
without it (offline) these tests skip.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cli.detect import NoFaceFound, detect_faces, detect_landmarks
from cli.detect.mediapipe import (
    MediaPipeDetector,
    WeightsUnavailable,
    blazeface,
    warp,
    weights,
)
from cli.detect.mediapipe.ibug68 import MESH_TO_IBUG68, mesh_to_ibug68
from cli.detect.mediapipe.tflite import TFLiteError, read_model
from cli.files import load_image
from losses import landmark_nme

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = json.loads((ROOT / "tests" / "data" / "mediapipe_reference.json").read_text())


@pytest.fixture(scope="module")
def wheel():
    try:
        return weights.wheel_path()
    except WeightsUnavailable as exc:
        pytest.skip(f"MediaPipe's models are not available: {exc}")


@pytest.fixture(scope="module")
def detector(wheel):
    return MediaPipeDetector(pyramid=False)  # MediaPipe's own pipeline: whole image, no re-crop


@pytest.fixture(scope="module")
def astronaut():
    return load_image(ROOT / "assets" / "astronaut.png")


def variant(image: torch.Tensor, name: str) -> torch.Tensor:
    """The variants of make_mediapipe_reference.py, built the same way (8-bit values)."""
    if name == "astronaut_rot90":
        return torch.rot90(image, k=-1, dims=(1, 2)).contiguous()
    if name == "astronaut_mirror":
        return image.flip(-1).contiguous()
    if name == "astronaut_gray":
        gray = torch.round((image * 255).round().mean(0, keepdim=True)) / 255
        return gray.expand(3, -1, -1).contiguous()
    return image


# --- the TFLite reader -------------------------------------------------------------------------

def test_tflite_reader_reads_the_detector_graph(wheel):
    graph = read_model(weights.read_tflite("face_detection_short_range", wheel))
    assert graph.tensors[graph.inputs[0]].shape == (1, 128, 128, 3)
    assert [graph.tensors[i].shape for i in graph.outputs] == [(1, 896, 16), (1, 896, 1)]
    ops = [o.op for o in graph.operators]
    assert ops.count("CONV_2D") == 21 and ops.count("DEPTHWISE_CONV_2D") == 16
    first_conv = next(o for o in graph.operators if o.op == "CONV_2D")
    assert first_conv.options["stride"] == (2, 2) and first_conv.options["padding"] in ("same", "valid")
    weight = graph.tensors[graph.operators[ops.index("DEQUANTIZE")].inputs[0]]
    assert weight.data is not None and weight.data.dtype == "float16" and weight.data.shape == weight.shape


def test_tflite_reader_densifies_sparse_weights(wheel):
    graph = read_model(weights.read_tflite("face_detection_full_range", wheel))
    sparse = [t for t in graph.tensors if t.sparse]
    assert len(sparse) == 46
    for t in sparse:
        assert t.data.shape == t.shape
        assert 0 < (t.data != 0).mean() < 1  # zeros filled in, the stored values placed


def test_tflite_reader_rejects_other_bytes(wheel):
    with pytest.raises(TFLiteError, match="not a TFLite model"):
        read_model(b"PK\x03\x04 certainly not a model")
    data = weights.read_tflite("face_landmark", wheel)
    with pytest.raises(TFLiteError):
        read_model(data[:4096])  # truncated: offsets point past the end


def test_wheel_members_are_checked(tmp_path):
    import zipfile
    fake = tmp_path / "mediapipe-0.10.21-fake.whl"
    with zipfile.ZipFile(fake, "w") as z:
        z.writestr(weights.MODELS["face_landmark"][0], b"TFL3 but not the real file")
    with pytest.raises(WeightsUnavailable, match="SHA-256"):
        weights.read_tflite("face_landmark", fake)


def test_missing_wheel_or_pip_failure_is_one_clear_line(tmp_path, monkeypatch):
    monkeypatch.setenv("MORPH_MEDIAPIPE_WHEEL", str(tmp_path / "nowhere.whl"))
    with pytest.raises(WeightsUnavailable, match="no such file"):
        weights.wheel_path()
    monkeypatch.delenv("MORPH_MEDIAPIPE_WHEEL")
    monkeypatch.setenv("MORPH_CACHE", str(tmp_path / "cache"))

    def offline(*args, **kwargs):
        return subprocess.CompletedProcess(args, 1, "", "ERROR: Could not find a version (network unreachable)")
    import cli.wheels

    monkeypatch.setattr(cli.wheels.subprocess, "run", offline)
    with pytest.raises(WeightsUnavailable, match="cannot download mediapipe==0.10.21 .*MORPH_MEDIAPIPE_WHEEL"):
        weights.wheel_path()


# --- anchors, decoding, NMS, the 68-point mapping --------------------------------------------------

def test_ssd_anchors_follow_mediapipe_layout():
    short = blazeface.ssd_anchor_centers(blazeface.SPECS["short"])
    assert short.shape == (896, 2)
    assert torch.allclose(short[:2], torch.full((2, 2), 0.5 / 16))  # 2 anchors per cell on 16x16
    assert torch.allclose(short[2], torch.tensor([1.5 / 16, 0.5 / 16]))
    assert torch.allclose(short[512:518], torch.full((6, 2), 0.5 / 8))  # then 6 per cell on 8x8
    full = blazeface.ssd_anchor_centers(blazeface.SPECS["full"])
    assert full.shape == (2304, 2) and torch.allclose(full[-1], torch.tensor([47.5 / 48, 47.5 / 48]))


def test_decode_scales_by_input_size_around_anchors():
    anchors = torch.tensor([[0.25, 0.75]])
    raw = torch.zeros(1, 1, 16)
    raw[0, 0, :4] = torch.tensor([12.8, -12.8, 64.0, 32.0])  # dx, dy, w, h in input pixels (128)
    raw[0, 0, 4:6] = torch.tensor([6.4, 0.0])
    boxes, points, scores = blazeface.decode(raw, torch.tensor([[[0.0]]]), anchors, 128)
    assert torch.allclose(boxes[0, 0], torch.tensor([0.35 - 0.25, 0.65 - 0.125, 0.35 + 0.25, 0.65 + 0.125]))
    assert torch.allclose(points[0, 0, 0], torch.tensor([0.30, 0.75]))
    assert scores.item() == pytest.approx(0.5)


def test_weighted_nms_merges_overlaps_by_score():
    boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.1, 0.0, 1.1, 1.0], [3.0, 3.0, 4.0, 4.0]])
    points = torch.arange(3.0)[:, None, None].expand(3, 6, 2)
    scores = torch.tensor([0.6, 0.9, 0.7])
    out_boxes, out_points, out_scores = blazeface.weighted_nms(boxes, points, scores)
    assert out_scores.tolist() == pytest.approx([0.9, 0.7])
    assert torch.allclose(out_boxes[0], (0.6 * boxes[0] + 0.9 * boxes[1]) / 1.5)
    assert torch.allclose(out_points[0], torch.full((6, 2), 0.9 / 1.5))
    assert torch.equal(out_boxes[1], boxes[2])


def test_mesh_to_ibug68_takes_vertices_and_means_of_pairs():
    mesh = torch.arange(468.0)[:, None].expand(468, 2)
    points = mesh_to_ibug68(mesh)
    assert points.shape == (68, 2) and len(MESH_TO_IBUG68) == 68
    assert points[8, 0] == 152 and points[3, 0] == (132 + 58) / 2  # chin; a pair


# --- parity with the real MediaPipe ---------------------------------------------------------------

@pytest.mark.parametrize("name", ["astronaut", "astronaut_rot90", "astronaut_mirror", "astronaut_gray"])
def test_parity_with_mediapipe(detector, astronaut, name):
    ref = REFERENCE[name]
    image = variant(astronaut, name)
    h, w = image.shape[1:]
    assert [w, h] == ref["size"]
    for kind in ("short", "full"):
        model = blazeface.BlazeFace(kind)
        window = (torch.tensor([0]), torch.tensor([[w / 2, h / 2]]), torch.tensor([float(max(h, w))]))
        (boxes, points, scores), = model.detect(image[None], *window, 0.5)
        expected = ref[f"detections_{kind}"]
        assert len(scores) == len(expected), kind
        # A candidate scoring within 0.01 of the threshold may fall on either side of it in
        # MediaPipe, which changes the weighted-NMS mean: such cases get a looser box tolerance.
        _, _, raw_scores = model.raw(warp.crop(image[None], *window, torch.zeros(1), model.spec.size))
        tolerance = 8.0 if ((raw_scores - 0.5).abs() < 0.01).any() else 1.5
        for b, p, s, e in zip(boxes + 0.5, points + 0.5, scores, expected):
            assert (b - torch.tensor(e["box"])).abs().max() < tolerance, kind
            assert (p - torch.tensor(e["keypoints"])).abs().max() < tolerance + 1, kind
            assert abs(float(s) - e["score"]) < 0.01, kind
    faces = detector.detect(image)[0]
    assert len(faces) == len(ref["meshes"]) == 1
    mesh = torch.tensor(ref["meshes"][0])
    err = (faces[0].dense[:, :2] - mesh[:, :2]).norm(dim=-1)
    assert err.mean() < 0.3 and err.max() < 1.5
    assert (faces[0].dense[:, 2] - mesh[:, 2]).abs().max() < 1.5


def test_batch_gives_the_same_faces_as_one_by_one(detector, astronaut):
    images = torch.stack([astronaut, astronaut.flip(-1)])
    batched = detector.detect(images)
    for k in range(2):
        alone = detector.detect(images[k])[0]
        assert len(batched[k]) == len(alone) == 1
        assert torch.allclose(batched[k][0].dense, alone[0].dense, atol=5e-3)  # pixels; float summation order
        assert torch.allclose(batched[k][0].box, alone[0].box, atol=1e-4)



def test_float64_networks_give_the_float32_points(detector, astronaut):
    """The default model's build runs the detector in float64 (bit-stable across CPUs); it must be the same detector."""
    double = MediaPipeDetector(pyramid=False, dtype=torch.float64)
    single, wide = detector.detect(astronaut)[0], double.detect(astronaut.double())[0]
    assert len(single) == len(wide) == 1
    assert wide[0].dense.dtype == torch.float64
    assert (wide[0].dense[:, :2] - single[0].dense[:, :2]).norm(dim=-1).max() < 0.05
    assert abs(wide[0].score - single[0].score) < 1e-4
# --- odd photos -------------------------------------------------------------------------------------

def test_no_face_raises_no_face_found(wheel):
    g = torch.Generator().manual_seed(0)
    for image in (torch.full((3, 240, 320), 0.5), torch.rand(3, 240, 320, generator=g)):
        assert detect_faces(image) == []
        with pytest.raises(NoFaceFound, match="no face found"):
            detect_landmarks(image)


def test_dark_photo_still_gives_the_same_landmarks(wheel, astronaut):
    bright, _ = detect_landmarks(astronaut)
    dark, count = detect_landmarks(torch.round(astronaut * 0.12 * 255) / 255)  # max value ~30/255
    assert count == 1
    assert landmark_nme(dark, bright) < 0.03


def test_face_cut_by_the_image_border(wheel, astronaut):
    full, _ = detect_landmarks(astronaut)
    left = int(full[:, 0].min() + 0.35 * (full[:, 0].max() - full[:, 0].min()))  # cut through the left eye
    faces = detect_faces(astronaut[:, :, left:])
    assert len(faces) == 1
    points = faces[0].landmarks68 + torch.tensor([left, 0.0])
    visible = full[:, 0] > left + 10
    assert (points[visible] - full[visible]).norm(dim=-1).mean() < 6


def astronaut_face(astronaut: torch.Tensor, full: torch.Tensor) -> torch.Tensor:
    """A square crop around the astronaut's face (1.6x its landmark box)."""
    center = (full.amin(0) + full.amax(0)) / 2
    half = int((full.amax(0) - full.amin(0)).max() * 0.8)
    x, y = int(center[0]), int(center[1])
    return astronaut[:, y - half:y + half, x - half:x + half]


def test_tiny_faces_in_a_large_photo_are_found_by_the_pyramid(wheel, astronaut):
    import kornia
    full, _ = detect_landmarks(astronaut)
    face = kornia.geometry.transform.resize(astronaut_face(astronaut, full)[None], (72, 72), antialias=True)[0]
    canvas = torch.full((3, 1600, 1600), 0.45)
    spots = [(200, 300), (900, 250), (400, 1200), (1300, 1300)]
    for x, y in spots:
        canvas[:, y:y + 72, x:x + 72] = face
    whole = MediaPipeDetector(pyramid=False).detect(canvas)[0]
    found = MediaPipeDetector(pyramid=True).detect(canvas)[0]
    assert len(whole) < 4 and len(found) == 4
    centers = sorted((round(float(f.box[0] + f.box[2]) / 2), round(float(f.box[1] + f.box[3]) / 2)) for f in found)
    for (cx, cy), (x, y) in zip(centers, sorted(spots)):
        assert abs(cx - (x + 36)) < 12 and abs(cy - (y + 36)) < 12


def test_twenty_faces_in_one_photo(wheel, astronaut):
    full, _ = detect_landmarks(astronaut)
    import kornia
    face = kornia.geometry.transform.resize(astronaut_face(astronaut, full)[None], (180, 180), antialias=True)[0]
    rows = []
    for r in range(4):
        cells = []
        for c in range(5):
            cell = face.flip(-1) if (r + c) % 2 else face
            cells.append(cell * (0.6 + 0.1 * r))  # darker rows
        rows.append(torch.cat(cells, dim=2))
    grid = torch.cat(rows, dim=1)  # 720 x 900
    faces = detect_faces(grid)
    assert len(faces) == 20
    assert all(f.dense.shape == (468, 3) and f.landmarks68.shape == (68, 2) for f in faces)


def test_default_path_does_not_import_dlib(wheel):
    code = ("import sys, torch; from cli.detect import detect_faces; "
            "detect_faces(torch.full((3, 64, 64), 0.5)); assert 'dlib' not in sys.modules, 'dlib imported'")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr[-500:]
