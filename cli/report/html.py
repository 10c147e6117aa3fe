"""HTML reports that open from disk with no network: ``report.html`` for one fit (photo,
overlay, landmarks, a 3D viewer of the textured mesh, loss curve, numbers; the template is
``report.html`` beside this file) and ``index.html`` for a batch. Everything is inlined:
images as ``data:`` URIs, the mesh as base64 arrays, the viewer (``viewer.js``, written for
morph) as a script."""

from __future__ import annotations

import base64
import html
import io
import json
from importlib import resources
from pathlib import Path
from string import Template

import numpy as np

from morphable import atomic_path, split_seams

PHOTO_MAX_SIDE = 1024  # the report's copies of the photo and overlay (the files keep full size)
THUMBNAIL_SIDE = 160

STYLE = """
body { font: 15px/1.45 system-ui, sans-serif; margin: 0; color: #1d1f23; background: #f4f5f7; }
header, main, footer { max-width: 1280px; margin: 0 auto; padding: 0 20px; }
header h1 { font-size: 22px; margin: 18px 0 4px; } header p { margin: 0 0 12px; color: #4a4f57; }
.panels { display: grid; grid-template-columns: repeat(auto-fit, minmax(420px, 1fr)); gap: 18px; }
figure { margin: 0; background: #fff; border-radius: 8px; padding: 12px; box-shadow: 0 1px 3px #0002; }
figcaption { font-size: 13px; color: #4a4f57; margin-top: 8px; }
.stack { position: relative; } .stack img, .stack svg { display: block; width: 100%; height: auto; }
.stack svg, .stack img.layer { position: absolute; left: 0; top: 0; height: 100%; }
#viewer { width: 100%; aspect-ratio: 1; display: block; border-radius: 6px; background: #292b30; touch-action: none; }
label { margin-right: 14px; white-space: nowrap; } button { margin: 6px 6px 0 0; }
table { border-collapse: collapse; background: #fff; } td, th { padding: 4px 10px; border-bottom: 1px solid #e3e5e8; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
figure.plot svg { display: block; max-width: 100%; height: auto; }
section { margin: 22px 0; } pre { background: #fff; padding: 10px; overflow: auto; font-size: 12px; }
.failed { color: #a0161b; } .ok { color: #1d7a35; } .error { color: #a0161b; }
img.thumb { width: 120px; height: auto; border-radius: 4px; display: block; }
"""


def data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def encode_image(image: np.ndarray, fmt: str = "JPEG", max_side: int | None = None, quality: int = 90) -> bytes:
    """``[H,W,3]`` uint8 -> JPEG or PNG bytes, shrunk to ``max_side`` when larger."""
    from PIL import Image

    picture = Image.fromarray(image)
    if max_side and max(picture.size) > max_side:
        picture.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    picture.save(buffer, format=fmt, **({"quality": quality} if fmt == "JPEG" else {"compress_level": 1}))
    return buffer.getvalue()


def viewer_mesh(vertices: np.ndarray, normals: np.ndarray, triangles: np.ndarray, uv: np.ndarray,
                uv_triangles: np.ndarray | None) -> dict:
    """The mesh as the viewer reads it: one vertex per (vertex, UV) pair, base64 float32/uint arrays."""
    if uv_triangles is None:
        uv_triangles = triangles
    vertex, uv_index, split = split_seams(triangles, uv_triangles)
    wide = len(vertex) >= 2**16

    def b64(array: np.ndarray, dtype: str) -> str:  # little-endian, as typed arrays read it
        return base64.b64encode(np.ascontiguousarray(array, dtype=np.dtype(dtype).newbyteorder("<")).tobytes()).decode()

    return {"positions": b64(vertices[vertex], "f4"), "normals": b64(normals[vertex], "f4"), "uvs": b64(uv[uv_index], "f4"),
            "indices": b64(split, "u4" if wide else "u2"), "index_type": "uint32" if wide else "uint16"}


def _resource(name: str) -> str:
    """A file shipped beside this module (``report.html``, ``viewer.js``)."""
    return resources.files("cli.report").joinpath(name).read_text(encoding="utf-8")


def _landmark_svg(target: np.ndarray, fitted: np.ndarray, width: int, height: int) -> str:
    r = max(width, height) * 0.005

    def dots(points):
        return "".join(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{r:.1f}"/>' for x, y in points)

    return (f'<svg viewBox="0 0 {width} {height}" preserveAspectRatio="none" aria-label="landmarks">'
            f'<g id="lm-target" fill="none" stroke="#27d35a" stroke-width="{r * 0.6:.1f}">{dots(target)}</g>'
            f'<g id="lm-fitted" fill="#ff3b3b">{dots(fitted)}</g></svg>')


def _figures(report: dict) -> list[tuple[str, str]]:
    """The headline numbers of a ``report.json`` as (label, text)."""
    rows = []
    nme = report.get("landmark_nme_vs_input") or {}
    if nme:
        rows.append(("landmark NME vs input", (f"{100 * nme.get('outer_eye', float('nan')):.2f} % outer-eye, "
                                               f"{100 * nme.get('bbox', float('nan')):.2f} % bbox")))
    rows.append(("fit time", (f"{report.get('seconds', float('nan')):.2f} s on {report.get('device', '?')} "
                              f"({report.get('backend', '?')} rasteriser)")))
    if "landmarks_source" in report:
        rows.append(("landmarks from", f"{report['landmarks_source']}" + (
            f", {report['faces_found']} face(s) found" if "faces_found" in report else "")))
    if "image_size" in report:
        rows.append(("image", f"{report['image_size'][1]} x {report['image_size'][0]} px"))
    rows.append(("model", str(report.get("model", ""))))
    return rows


def _stage_table(report: dict) -> str:
    stages = report.get("stages") or []
    terms = sorted({k for s in stages for k in s.get("final_losses", {}) if k != "total"})
    head = "".join(f"<th>{html.escape(t)}</th>" for t in ["stage", "iterations", "seconds", *terms, "total"])
    rows = []
    for s in stages:
        losses = s.get("final_losses", {})
        cells = [html.escape(s.get("name", "")), str(s.get("iterations", "")), f"{s.get('seconds', 0):.2f}"]
        cells += [f"{losses[t]:.4g}" if t in losses else "" for t in [*terms, "total"]]
        rows.append("<tr>" + "".join(f'<td class="num">{c}</td>' if k else f"<td>{c}</td>"
                                     for k, c in enumerate(cells)) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def report_html(name: str, photo: np.ndarray, overlay: np.ndarray, target: np.ndarray, fitted: np.ndarray,
                mesh: dict, textures: dict[str, bytes], loss_svg: str | None, report: dict, files: list[str]) -> str:
    """The page for one fit (the template ``report.html`` beside this file, filled in).

    Args:
        name: the image's file name (the title).
        photo, overlay: ``[H,W,3]`` uint8, the photo and the fit drawn over it.
        target, fitted: ``[68,2]`` landmarks in the photo's pixels.
        mesh: :func:`viewer_mesh`'s arrays.
        textures: viewer mode name (``photo``, ``albedo``) -> JPEG bytes of the texture.
        loss_svg: the loss curve, an ``<svg>`` element (None: nothing was optimised, e.g. a network's prediction);
        report: ``report.json``'s content; files: the folder's files.
    """
    h, w = photo.shape[:2]
    escape = html.escape
    mesh = dict(mesh, textures={k: data_uri(v, "image/jpeg") for k, v in textures.items()})
    page = Template(_resource("report.html"))
    return page.substitute(
        name=escape(name), style=STYLE, width=w, height=h,
        summary=escape(" · ".join(v for _, v in _figures(report)[:2])),
        photo=data_uri(encode_image(photo, max_side=PHOTO_MAX_SIDE), "image/jpeg"),
        overlay=data_uri(encode_image(overlay, max_side=PHOTO_MAX_SIDE), "image/jpeg"),
        landmarks=_landmark_svg(target, fitted, w, h),
        modes="".join(f'<button data-mode="{m}">{m}</button>' for m in [*textures, "shape"]),
        losses=(f'<figure class="plot">{loss_svg}</figure>' if loss_svg is not None
                else "<p>No optimisation: the parameters are a network's prediction.</p>"),
        figures="".join(f"<tr><th>{escape(k)}</th><td>{escape(v)}</td></tr>" for k, v in _figures(report)),
        stages=_stage_table(report), report_json=escape(json.dumps(report, indent=1)),
        texture_images="".join(f'<img data-texture="{k}" alt="{k} texture" title="{k}" '
                               f'style="width:256px;margin-right:12px">' for k in textures),
        links=" · ".join(f'<a href="{escape(f)}">{escape(f)}</a>' for f in files),
        mesh=json.dumps(mesh), viewer=_resource("viewer.js"))


def index_html(entries: list[dict], images: tuple[int, int] | None = None) -> str:
    """A batch's page: per image (or face) its thumbnail, status, headline numbers or error line.

    ``entries``: dicts with ``name``, ``link`` (relative, or None), ``thumbnail`` (JPEG bytes or
    None), ``report`` (``report.json`` content, or None) and ``error`` (one line, or None).
    ``images``: (fitted, total) for the title, when entries are faces rather than images.
    """
    rows = []
    for e in entries:
        thumb = (f'<a href="{html.escape(e["link"])}"><img class="thumb" src="{data_uri(e["thumbnail"], "image/jpeg")}" '
                 f'alt="{html.escape(e["name"])}"></a>' if e.get("thumbnail") else "")
        name = (f'<a href="{html.escape(e["link"])}">{html.escape(e["name"])}</a>' if e.get("link")
                else html.escape(e["name"]))
        if e.get("error"):
            status, figures = '<span class="failed">failed</span>', f'<span class="error">{html.escape(e["error"])}</span>'
        else:
            status = '<span class="ok">fitted</span>'
            figures = "<br>".join(f"{html.escape(k)}: {html.escape(v)}" for k, v in _figures(e.get("report") or {})[:3])
        rows.append(f"<tr><td>{thumb}</td><td>{name}</td><td>{status}</td><td>{figures}</td></tr>")
    ok, total = images or (sum(1 for e in entries if not e.get("error")), len(entries))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>morph fit: {total} images</title><style>{STYLE}</style></head>
<body><header><h1>morph fit: {ok} of {total} images fitted</h1></header>
<main><table><tr><th></th><th>image</th><th>status</th><th>figures</th></tr>{"".join(rows)}</table></main>
</body></html>
"""


def write_index(out_root: Path, results: list[tuple[Path, str | None]], names: list[str] | None = None) -> Path:
    """Write ``out_root/index.html`` for ``results``: (image path, error line or None) per image,
    reading each fitted image's ``report.json`` and ``overlay.png`` from ``out_root/<name>/``, or one
    row per face from ``out_root/<name>/face_<k>/`` for a photo of several faces (``names``: the
    output folders, in the order of ``results``; default the stems)."""
    import imageio.v3 as iio

    def entry(label: str, folder: Path, link: str, error: str | None) -> dict:
        row = {"name": label, "link": None, "thumbnail": None, "report": None, "error": error}
        if error is None and (folder / "report.json").is_file():
            row["link"] = f"{link}/report.html"
            row["report"] = json.loads((folder / "report.json").read_text())
            if (folder / "overlay.png").is_file():
                row["thumbnail"] = encode_image(iio.imread(folder / "overlay.png")[..., :3], max_side=THUMBNAIL_SIDE)
        return row

    entries = []
    for (path, error), name in zip(results, names or [path.stem for path, _ in results]):
        folder = out_root / name
        faces = [] if error is not None or (folder / "report.json").is_file() else sorted(
            (int(d.name[5:]) for d in folder.glob("face_*") if d.name[5:].isdigit() and d.is_dir()))
        if faces:
            entries += [entry(f"{path.name}, face {k}", folder / f"face_{k}", f"{name}/face_{k}", None) for k in faces]
        else:
            entries.append(entry(path.name, folder, name, error))
    target = out_root / "index.html"
    with atomic_path(target) as tmp:
        tmp.write_text(index_html(entries, (sum(error is None for _, error in results), len(results))), encoding="utf-8")
    return target
