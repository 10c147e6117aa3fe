"""What a fit leaves to look at: baked textures, textured meshes, report.html, the loss plot, the batch index."""

import base64
import json
import math
import re
import shutil
from pathlib import Path

import imageio.v3 as iio
import kornia
import numpy as np
import pytest
import torch
import trimesh

import render
from cli.fitting.crop import Crop
from cli.fitting.optimise import FitResult, StageReport
from cli.fitting.scene import rotation_matrix
from cli.report import OUTPUT_FILES, bake, index_html, loss_curve_svg, render_view, texel_table, write_fit_outputs
from cli.report.html import encode_image
from cli.report.texture import harmonic_fill
from morphable import MorphableModel, Parameters, save_textured_mesh, split_seams
from tests.synthetic import ellipsoid, make_model_tensors

SIZE = 160  # photo side, pixels
TEXELS = 256


def uv_ellipsoid_model() -> MorphableModel:
    """The synthetic ellipsoid with per-corner UVs: longitude -> u (seam at the back), latitude -> v."""
    tensors, metadata = make_model_tensors(seed=0)
    n_lat, n_lon = 24, 32
    vertices, triangles = ellipsoid(n_lat, n_lon)
    v = vertices.double()
    longitude = torch.atan2(v[:, 0] / 75.0, v[:, 2] / 60.0)  # 0 at the front (+z), +-pi at the back
    u = torch.remainder(longitude + math.pi + 1e-6, 2 * math.pi) / (2 * math.pi)  # the back column at u = 0
    lat = 1 - torch.acos((v[:, 1] / 95.0).clamp(-1, 1)) / math.pi
    corner_u = u[triangles]
    # Triangles straddling the back seam: their corners at u ~ 0 belong at u ~ 1 on this side.
    wraps = (corner_u.max(1).values - corner_u.min(1).values) > 0.5
    corner_u = torch.where(wraps[:, None] & (corner_u < 0.5), corner_u + 1, corner_u)
    # Poles: a corner at a pole takes the u of its triangle's other corners.
    pole = (v[triangles][..., 0].abs() + v[triangles][..., 2].abs()) < 1e-6
    others = torch.where(pole, torch.nan, corner_u).nanmean(1, keepdim=True).expand(-1, 3)
    corner_u = torch.where(pole, others, corner_u)
    corner_uv = torch.stack([corner_u, lat[triangles]], -1).reshape(-1, 2)
    keys, inverse = torch.unique(torch.round(corner_uv * 1e6), dim=0, return_inverse=True)
    uv = torch.zeros(len(keys), 2, dtype=torch.float64).index_copy(0, inverse, corner_uv)
    tensors["uv"] = (0.02 + 0.96 * uv).float()  # a margin around the layout
    tensors["uv_triangles"] = inverse.reshape(-1, 3)
    return MorphableModel(tensors, metadata)


@pytest.fixture(scope="module")
def model():
    return uv_ellipsoid_model()


def frontal(model, lighting=None, yaw=0.0) -> Parameters:
    """The model facing the camera (turned by ``yaw`` radians), filling ~70 % of a SIZE² photo."""
    p = Parameters.neutral(model.parameter_sizes, 1)
    p.pose[:, 1] = yaw
    p.pose[:, 3:5] = SIZE / 2
    p.pose[:, 6] = 0.7 * SIZE / 190.0
    if lighting is not None:
        p.lighting[:] = lighting
    return p


def bake_photo(model, params, photo, size=TEXELS):
    view = render_view(model, params, Crop(0.0, 0.0, 1.0, SIZE), SIZE, SIZE)
    return bake(model, params, photo, view.depth[0], view.mask[0], size)


def texel_values(image, table):
    return image.reshape(image.shape[0], -1)[:, table.texels].T


@pytest.mark.parametrize("centre", [(210.0, 150.0), (12.0, 290.0), (-200.0, 150.0)],
                         ids=["inside", "cut-by-the-corner", "outside"])
def test_a_view_rasterises_only_the_face_window_with_the_whole_images_pixels(model, centre):
    height, width = 300, 420
    p = frontal(model, yaw=0.6)
    p.pose[:, 3:5] = torch.tensor(centre)
    view = render_view(model, p, Crop(0.0, 0.0, 1.0, SIZE), height, width)
    with torch.no_grad():  # the whole image rasterised, as render_view did before it used a window
        vertices, albedo = model(p.identity, p.expression, p.albedo)
        whole = render.Renderer(model.triangles)(
            vertices, albedo, p.lighting, render.OrthographicCamera((height, width)), rotation_matrix(p),
            p.translation, p.scale, with_depth=True, attributes=model.face_mask.float()[None, :, None])
    for name in ("image", "mask", "depth", "attributes"):
        ours, theirs = getattr(view, name), getattr(whole, name)
        assert ours.shape == theirs.shape
        # Float rounding of shifted coordinates; depth is in model units (up to ~90 here).
        assert (ours - theirs).abs().max() <= 1e-4 * max(1.0, float(theirs.abs().max())), name
    # Antialiased silhouette pixels were compared too, and the face drew what it should.
    assert ((whole.mask > 0.01) & (whole.mask < 0.99)).any() == (centre[0] > 0)
    assert (whole.mask.sum() > 0) == (centre[0] > 0)


def test_visible_texels_take_the_photo_and_the_albedo_divides_by_the_shading(model):
    lighting = torch.zeros(1, 27)
    lighting[:, [0, 9, 18]] = 0.6
    lighting[:, [2, 11, 20]] = 0.25  # light from the camera: shading varies over the face
    params = frontal(model, lighting)
    ys, xs = torch.meshgrid(torch.arange(SIZE) + 0.5, torch.arange(SIZE) + 0.5, indexing="ij")
    photo = torch.stack([xs / SIZE, ys / SIZE, torch.full_like(xs, 0.5)])  # linear: bilinear sampling is exact
    baked = bake_photo(model, params, photo)
    table = texel_table(model, TEXELS)
    with torch.no_grad():
        vertices, _ = model()
        normals = render.vertex_normals(vertices, model.triangles)[0]
    points = table.at(vertices[0])
    pixels = render.OrthographicCamera((SIZE, SIZE)).project(points[None], torch.eye(3)[None], params.translation,
                                                            params.scale)[0]
    expected = torch.stack([pixels[:, 0] / SIZE, pixels[:, 1] / SIZE, torch.full_like(pixels[:, 0], 0.5)], 1)
    weight = texel_values(baked.photo_weight, table)[:, 0]
    full = weight > 0.999
    assert full.sum() > 0.1 * len(full)  # the middle of the front
    torch.testing.assert_close(texel_values(baked.texture, table)[full], expected[full], atol=1e-4, rtol=0)
    irradiance = table.at(render.sh_irradiance(normals[None], lighting)[0])  # per vertex, interpolated
    torch.testing.assert_close(texel_values(baked.albedo, table)[full], (expected[full] / irradiance[full]).clamp(0, 1),
                               atol=1e-4, rtol=0)
    # The back of the ellipsoid faces away: nothing of it comes from the photo.
    assert weight[points[:, 2] < -10].max() == 0


def test_unseen_texels_are_filled_without_holes_or_seams(model):
    colour = torch.tensor([0.6, 0.45, 0.35])
    photo = colour[:, None, None].expand(3, SIZE, SIZE).clone()
    baked = bake_photo(model, frontal(model), photo)  # neutral light: irradiance 0.8 everywhere
    albedo = colour / 0.8
    # Seen or not, on the islands or between them, the albedo is the photo's (the fill carries the
    # photo - model difference over the back, where the model's albedo varies by +-0.05).
    # The error is the model's own albedo showing through where the fill carries it: 0.0184 mean,
    # 0.079 max for any photo colour (deterministic: 1 and 2 threads agree). A
    # hole or a black gap between islands is off by the colour itself (0.44-0.75).
    error = (baked.albedo - albedo[:, None, None]).abs()
    assert error.mean() < 0.025 and error.max() < 0.1
    assert baked.texture.min() > 0.1  # no black anywhere: no holes, nothing between islands
    # Across the UV seam at the back (u = 0.02 and u = 0.98 are the same longitude) the texture agrees.
    rows = slice(int(0.3 * TEXELS), int(0.7 * TEXELS))
    left, right = baked.albedo[:, rows, int(0.02 * TEXELS) + 1], baked.albedo[:, rows, int(0.98 * TEXELS) - 2]
    assert (left - right).abs().max() < 0.02


def test_the_hidden_side_is_filled_from_the_mirrored_side():
    model = MorphableModel.from_file("assets/morph_face.safetensors")
    params = Parameters.neutral(model.parameter_sizes, 1)  # neutral light: irradiance 0.8 everywhere
    params.pose[:, 1] = 1.0  # turned ~57 degrees: one side of the face turns away
    params.pose[:, 3:5] = SIZE / 2
    params.pose[:, 6] = 0.6 * SIZE / 190.0
    ys, _ = torch.meshgrid(torch.arange(SIZE) + 0.5, torch.arange(SIZE) + 0.5, indexing="ij")

    def stripes(y):  # by image row
        return 0.45 + 0.3 * torch.sin(y / 4)

    photo = torch.stack([stripes(ys), torch.full_like(ys, 0.5), torch.full_like(ys, 0.4)])
    baked = bake_photo(model, params, photo)
    table = texel_table(model, TEXELS)
    weight = texel_values(baked.photo_weight, table)[:, 0]
    mirror_weight = torch.nn.functional.grid_sample(baked.photo_weight[None], table.mirror_uv[None, None],
                                                    align_corners=False)[0, 0, 0]
    hidden = (weight == 0) & (mirror_weight > 0.99) & table.mirror_ok
    assert hidden.sum() > 500
    # Turning about the vertical axis keeps a point and its mirror image on one image row, so a
    # hidden texel filled from its mirror shows the stripe of its own row.
    with torch.no_grad():
        vertices, _ = model()
    rotation = kornia.geometry.conversions.axis_angle_to_rotation_matrix(params.rotation)
    camera = render.OrthographicCamera((SIZE, SIZE))
    rows = camera.project(table.at(vertices[0])[None], rotation, params.translation, params.scale)[0, :, 1]
    expected = stripes(rows[hidden]) / 0.8  # pixel centres are at +0.5: the photo's value at y is stripes(y)
    error = (texel_values(baked.albedo, table)[hidden, 0] - expected).abs()
    assert error.median() < 0.03 and error.quantile(0.9) < 0.1


def test_harmonic_fill_keeps_known_values_and_spreads_them():
    model = uv_ellipsoid_model()
    table = texel_table(model, 64)
    front = (model.shape_mean[:, 2:] > 0).double().numpy()
    values = np.array([[0.3, -0.2, 0.7]]).repeat(model.num_vertices, 0)
    filled = harmonic_fill(values * front, front, table)
    np.testing.assert_allclose(filled, values, atol=2e-3)  # a constant is harmonic
    assert np.abs(harmonic_fill(values, np.zeros_like(front), table)).max() < 1e-6
    height = model.shape_mean[:, 1:2].double().numpy()  # varying: the fill keeps within the known range
    filled = harmonic_fill(height * front, front, table)
    known = height[front[:, 0] > 0]
    assert known.min() - 1e-3 <= filled.min() and filled.max() <= known.max() + 1e-3  # maximum principle
    error = np.abs(filled[front[:, 0] > 0] - known)  # millimetres, of +-95: the known values are kept
    assert np.median(error) < 0.5 and error.max() < 3.0


def test_textured_meshes_round_trip(tmp_path, model):
    with torch.no_grad():
        vertices, _ = model(torch.randn(1, model.n_identity))
    vertex, uv_index, _ = split_seams(model.triangles, model.uv_triangles)
    assert len(vertex) > model.num_vertices  # the seam and the poles are split
    save_textured_mesh(tmp_path / "mesh.obj", vertices[0], model.triangles, model.uv, model.uv_triangles)
    assert "map_Kd texture.png" in (tmp_path / "mesh.mtl").read_text()
    obj = (tmp_path / "mesh.obj").read_text()
    assert "mtllib mesh.mtl" in obj and obj.count("\nv ") == model.num_vertices  # vertex order kept
    faces = np.array([[int(c.split("/")[0]) - 1 for c in line.split()[1:]] for line in obj.splitlines()
                      if line.startswith("f ")])
    np.testing.assert_array_equal(faces, model.triangles.numpy())
    iio.imwrite(tmp_path / "texture.png", np.full((8, 8, 3), 200, np.uint8))
    loaded = trimesh.load(tmp_path / "mesh.obj", process=False)
    assert len(loaded.faces) == model.num_triangles
    # trimesh splits the seam vertices as we do; each loaded vertex sits where its UV says.
    theirs = torch.tensor(np.c_[loaded.vertices, loaded.visual.uv], dtype=torch.float64)
    ours = torch.cat([vertices[0][torch.tensor(vertex)], model.uv[torch.tensor(uv_index)]], 1).double()
    distance, match = torch.cdist(theirs, ours).min(1)
    assert distance.max() < 1e-4 and len(set(match.tolist())) == len(ours)

    image = np.linspace(0, 255, 16 * 16 * 3).astype(np.uint8).reshape(16, 16, 3)
    normals = torch.nn.functional.normalize(torch.randn(model.num_vertices, 3), dim=1)
    save_textured_mesh(tmp_path / "mesh.glb", vertices[0], model.triangles, model.uv, model.uv_triangles,
                       texture=encode_image(image, fmt="PNG"), normals=normals, scale=1e-3)
    scene = trimesh.load(tmp_path / "mesh.glb", process=False)
    glb = next(iter(scene.geometry.values()))
    assert len(glb.vertices) == len(vertex) and len(glb.faces) == model.num_triangles
    np.testing.assert_allclose(glb.vertices, vertices[0].numpy()[vertex] * 1e-3, atol=1e-6)
    _, _, split = split_seams(model.triangles, model.uv_triangles)
    np.testing.assert_array_equal(glb.faces, split)  # counter-clockwise as given: glTF's front faces
    np.testing.assert_allclose(glb.visual.uv, model.uv.numpy()[uv_index], atol=1e-6)
    np.testing.assert_allclose(glb.vertex_normals, normals.numpy()[vertex], atol=1e-6)
    np.testing.assert_array_equal(np.asarray(glb.visual.material.baseColorTexture.convert("RGB")), image)
    with pytest.raises(ValueError, match="JPEG or PNG"):
        save_textured_mesh(tmp_path / "bad.glb", vertices[0], model.triangles, model.uv, model.uv_triangles,
                           texture=b"GIF89a")
    assert not (tmp_path / "bad.glb").exists()


def fake_fit(model, params) -> FitResult:
    with torch.no_grad():
        vertices, _ = model(params.identity, params.expression)
    camera = render.OrthographicCamera((SIZE, SIZE))
    marks = camera.project(model.landmark_points(vertices), torch.eye(3)[None], params.translation, params.scale)[0]
    stages = [StageReport("landmark", 3, 0.1, {"landmark": 1e-3, "total": 1.1e-3}, [3e-3, 2e-3, 1.1e-3],
                          {"landmark": [2.9e-3, 1.9e-3, 1e-3], "prior": [1e-4, 1e-4, 1e-4]}),
              StageReport("photometric", 2, 0.2, {"photometric": 0.5, "total": 0.6}, [0.9, 0.6],
                          {"photometric": [0.8, 0.5], "landmark": [1e-3, 1e-3], "prior": [1e-4, 1e-4]})]
    return FitResult(params, Crop(0.0, 0.0, 1.0, SIZE), marks + 0.5, marks, stages, 1.5, "torch", "cpu")


@pytest.fixture(scope="module")
def report_folder(tmp_path_factory, model):
    folder = tmp_path_factory.mktemp("out") / "ellipsoid"
    ys, xs = torch.meshgrid(torch.arange(SIZE) / SIZE, torch.arange(SIZE) / SIZE, indexing="ij")
    photo = torch.stack([0.4 + 0.4 * xs, 0.3 + 0.3 * ys, torch.full_like(xs, 0.3)])
    params = frontal(model)
    write_fit_outputs(folder, fake_fit(model, params), model, photo, "faces/ellipsoid.png",
                      {"landmark_nme_vs_input": {"bbox": 0.01, "outer_eye": 0.02}}, texture_size=TEXELS)
    return folder


def test_fit_outputs_are_all_written(report_folder, model):
    assert sorted(p.name for p in report_folder.iterdir()) == sorted(OUTPUT_FILES)
    for name in ("texture.png", "albedo.png"):
        assert iio.imread(report_folder / name).shape == (TEXELS, TEXELS, 3)
    assert "map_Kd texture.png" in (report_folder / "mesh.mtl").read_text()


def test_report_html_is_self_contained(report_folder, model):
    page = (report_folder / "report.html").read_text()
    assert "http://" not in page and "https://" not in page and "<link" not in page
    sources = re.findall(r'\bsrc="([^"]*)"', page)
    assert sources and all(s.startswith("data:") for s in sources)
    links = re.findall(r'\bhref="([^"]*)"', page)
    assert set(links) <= set(OUTPUT_FILES)  # links only to the files beside it
    assert "ellipsoid.png" in page and "2.00 %" in page  # the title and a number from report.json
    mesh = json.loads(re.search(r'<script type="application/json" id="mesh-data">(.*?)</script>', page, re.DOTALL).group(1))
    positions = np.frombuffer(base64.b64decode(mesh["positions"]), "<f4").reshape(-1, 3)
    indices = np.frombuffer(base64.b64decode(mesh["indices"]), "<u2").reshape(-1, 3)
    vertex, _, split = split_seams(model.triangles, model.uv_triangles)
    assert positions.shape == (len(vertex), 3) and indices.max() < len(positions)
    np.testing.assert_array_equal(indices, split)
    assert set(mesh["textures"]) == {"photo", "albedo"} and all(u.startswith("data:image/jpeg;base64,")
                                                               for u in mesh["textures"].values())
    assert "morphViewer" in page and "getContext(\"webgl2\"" in page  # the viewer, inlined


def test_loss_plot_explains_itself(model):
    import xml.etree.ElementTree as ET

    from cli.report.plot import HEIGHT, LEFT, TOP, WIDTH

    stages = fake_fit(model, frontal(model)).stages
    svg = ET.fromstring(loss_curve_svg(stages, "Fitting losses: <ellipsoid>.png"))  # well-formed, name escaped
    ns = {"s": "http://www.w3.org/2000/svg"}
    texts = [t.text for t in svg.iterfind(".//s:text", ns)]
    assert "Fitting losses: <ellipsoid>.png" in texts
    assert any("step" in t for t in texts) and any("loss" in t and "log scale" in t for t in texts)
    assert {"landmark (3)", "photometric (2)"} <= set(texts)  # the stages named, with their steps
    assert {"10⁻⁴", "10⁰"} <= set(texts)  # decades from the smallest term (1e-4) to the largest (0.9)
    assert {"total", "landmark", "prior", "photometric"} <= set(texts)  # the legend
    lines = {line.get("data-series") for line in svg.iterfind(".//s:polyline", ns)}
    assert lines == {"total", "landmark", "prior", "photometric"}
    (boundary,) = svg.iterfind(".//s:line[@class='stage']", ns)  # between the 3 landmark steps and the rest
    width = WIDTH - LEFT - 16
    assert float(boundary.get("x1")) == pytest.approx(LEFT + width * 2.5 / 4, abs=0.1)
    total = next(p for p in svg.iterfind(".//s:polyline", ns) if p.get("data-series") == "total")
    x, y = (float(v) for v in total.get("points").split()[0].split(","))
    height = HEIGHT - TOP - 52
    assert x == pytest.approx(LEFT) and y == pytest.approx(TOP + height * (0 - math.log10(3e-3)) / 4, abs=0.1)
    assert float(svg.get("width")) == WIDTH


def test_index_has_a_row_per_face_of_a_group_photo(report_folder, tmp_path):
    from cli.report import write_index

    out = tmp_path / "out"
    shutil.copytree(report_folder, out / "single")
    for k in (0, 2):  # face 1 failed: no folder
        shutil.copytree(report_folder, out / "group" / f"face_{k}")
    write_index(out, [(Path("a/single.png"), None), (Path("a/group.jpg"), None), (Path("a/blank.png"), "no face")],
                ["single", "group", "blank"])
    page = (out / "index.html").read_text()
    assert "2 of 3 images fitted" in page
    for link in ("single/report.html", "group/face_0/report.html", "group/face_2/report.html"):
        assert f'href="{link}"' in page
    assert "group.jpg, face 0" in page and "group.jpg, face 2" in page and "face_1" not in page
    assert page.count('class="thumb"') == 3


def test_index_lists_every_image_and_its_failure(report_folder):
    report = json.loads((report_folder / "report.json").read_text())
    page = index_html([
        {"name": "ellipsoid.png", "link": "ellipsoid/report.html", "thumbnail": b"\xff\xd8", "report": report,
         "error": None},
        {"name": "blank.png", "link": None, "thumbnail": None, "report": None,
         "error": "blank.png: no face found"}])
    assert "1 of 2 images fitted" in page
    assert 'href="ellipsoid/report.html"' in page and "2.00 %" in page
    assert "failed" in page and "blank.png: no face found" in page
    assert "http://" not in page and "https://" not in page
