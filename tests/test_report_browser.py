"""report.html in a real browser: headless Chromium (software WebGL, SwiftShader), offline, driven over
the DevTools protocol on a pipe (no extra Python package). Skipped where no Chromium is installed
(Debian: ``apt-get install chromium``; or set MORPH_CHROMIUM to a Chrome/Chromium binary)."""

import base64
import fcntl
import io
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from cli.fitting.crop import Crop
from cli.fitting.optimise import FitResult, StageReport
from cli.report import write_fit_outputs
from morphable import MorphableModel, Parameters

CHROMIUM = os.environ.get("MORPH_CHROMIUM") or next(
    (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome", "chrome")) if p), None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium installed (apt-get install chromium)")
SIZE = 256
BACKGROUND = np.array([41, 43, 48])  # the viewer's clear colour (0.16, 0.17, 0.19)


class DevTools:
    """A Chromium started headless with ``--remote-debugging-pipe``: commands go in on its fd 3,
    replies and events come out of its fd 4, as NUL-terminated JSON."""

    def __init__(self, profile):
        to_browser, self._to_browser = os.pipe()
        self._from_browser, from_browser = os.pipe()

        def wire():  # in the child: the two pipe ends become fds 3 and 4 (copied out of the way first)
            reading, writing = fcntl.fcntl(to_browser, fcntl.F_DUPFD, 10), fcntl.fcntl(from_browser, fcntl.F_DUPFD, 10)
            os.dup2(reading, 3)
            os.dup2(writing, 4)

        # Software WebGL through ANGLE's SwiftShader. (--use-gl=swiftshader alone makes Chromium 150's
        # GPU process exit at start-up; the page then loses its WebGL context now and then.)
        flags = ["--headless", "--no-sandbox", "--remote-debugging-pipe", "--use-gl=angle", "--use-angle=swiftshader",
                 "--enable-unsafe-swiftshader", "--window-size=1280,1000", "--hide-scrollbars",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-default-apps", "--disable-extensions", "--no-first-run", "--no-default-browser-check",
                 "--mute-audio", f"--user-data-dir={profile}", "about:blank"]
        self.process = subprocess.Popen([CHROMIUM, *flags], preexec_fn=wire, pass_fds=(3, 4),
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_browser)
        os.close(from_browser)
        self._buffer = b""
        self._next_id = 0
        self.events = []
        self.session = None

    def send(self, method, params=None, timeout=60.0, session=True):
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session and self.session:
            message["sessionId"] = self.session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def _read(self, deadline):
        while b"\0" not in self._buffer:
            if time.monotonic() > deadline:
                raise TimeoutError("Chromium did not answer")
            chunk = os.read(self._from_browser, 1 << 20)
            if not chunk:
                raise RuntimeError("Chromium closed the pipe")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def evaluate(self, expression):
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression, timeout=60.0):
        deadline = time.monotonic() + timeout
        while not self.evaluate(expression):
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out waiting for {expression}")
            time.sleep(0.1)

    def screenshot(self, clip) -> np.ndarray:
        data = self.send("Page.captureScreenshot", {"format": "png", "clip": {**clip, "scale": 1}})["data"]
        return iio.imread(io.BytesIO(base64.b64decode(data)))[..., :3]

    def close(self):
        try:
            self.send("Browser.close", session=False, timeout=10)
        except (RuntimeError, TimeoutError, OSError):
            pass  # it is going away anyway; the wait below ends it
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
        os.close(self._to_browser)
        os.close(self._from_browser)


@pytest.fixture(scope="module")
def scratch():
    """A private folder (pytest's shared temporary root can be pruned by other sessions running at once)."""
    with tempfile.TemporaryDirectory(prefix="morph-browser-") as folder:
        yield Path(folder)


@pytest.fixture(scope="module")
def report_page(scratch):
    """A report of the default model posed in a rendered photo (written as ``morph fit`` writes it)."""
    import kornia

    import render

    model = MorphableModel.from_file("assets/morph_face.safetensors")
    g = torch.Generator().manual_seed(3)
    params = Parameters.sample_prior(model.parameter_sizes, 1, g)
    params.expression *= 0.3
    params.pose[:, :3] = torch.tensor([[0.05, 0.3, 0.0]])
    params.pose[:, 3:5] = SIZE / 2
    params.pose[:, 6] = 0.6 * SIZE / 190
    rotation = kornia.geometry.conversions.axis_angle_to_rotation_matrix(params.rotation)
    camera = render.OrthographicCamera((SIZE, SIZE))
    with torch.no_grad():
        vertices, albedo = model(params.identity, params.expression, params.albedo)
        shot = render.Renderer(model.triangles)(vertices, albedo, params.lighting, camera, rotation,
                                                params.translation, params.scale)
        marks = camera.project(model.landmark_points(vertices), rotation, params.translation, params.scale)[0]
    photo = (shot.image[0] + (1 - shot.mask[0]) * torch.tensor([0.3, 0.5, 0.8])[:, None, None]).clamp(0, 1)
    stages = [StageReport("landmark", 2, 0.1, {"total": 1e-3}, [2e-3, 1e-3], {"landmark": [2e-3, 1e-3]})]
    result = FitResult(params, Crop(0.0, 0.0, 1.0, SIZE), marks, marks, stages, 1.0, "torch", "cpu")
    folder = scratch / "out" / "face"
    write_fit_outputs(folder, result, model, photo, "face.png", texture_size=512)
    return folder / "report.html"


def test_the_report_draws_the_face_in_3d_offline(report_page, scratch):
    browser = DevTools(scratch / "profile")
    try:
        target = browser.send("Target.createTarget", {"url": "about:blank"}, session=False)["targetId"]
        browser.session = browser.send("Target.attachToTarget", {"targetId": target, "flatten": True},
                                       session=False)["sessionId"]
        for domain in ("Page", "Network", "Runtime"):
            browser.send(f"{domain}.enable")
        browser.send("Network.emulateNetworkConditions",
                     {"offline": True, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1})
        browser.send("Page.navigate", {"url": report_page.as_uri()})
        browser.wait_for("document.readyState === 'complete' && window.morphViewer && morphViewer.state.ready"
                         " && [...document.images].every(i => i.complete && i.naturalWidth > 0)")
        browser.evaluate("new Promise(done => requestAnimationFrame(() => requestAnimationFrame(done)))")  # painted
        assert browser.evaluate("morphViewer.state.error || ''") == ""
        box = browser.evaluate("(() => { const r = document.getElementById('viewer').getBoundingClientRect();"
                               " return {x: r.x + scrollX, y: r.y + scrollY, width: r.width, height: r.height}; })()")
        assert box["width"] > 200 and box["height"] > 200
        front = browser.screenshot(box)
        browser.evaluate("morphViewer.setView(45, 0);"
                         "new Promise(done => requestAnimationFrame(() => requestAnimationFrame(done)))")
        turned = browser.screenshot(box)
        if os.environ.get("MORPH_SCREENSHOTS"):  # to look at them: a folder to write them into
            iio.imwrite(Path(os.environ["MORPH_SCREENSHOTS"]) / "viewer_front.png", front)
            iio.imwrite(Path(os.environ["MORPH_SCREENSHOTS"]) / "viewer_45.png", turned)

        # The canvas shows a mesh, not the empty background, and the middle of it is skin coloured
        # (the texture baked from the photo: red > green > blue).
        drawn = np.abs(front.astype(int) - BACKGROUND).sum(-1) > 30
        assert 0.15 < drawn.mean() < 0.9
        h, w = front.shape[:2]
        middle = front[h // 3:2 * h // 3, w // 3:2 * w // 3].reshape(-1, 3).astype(int)
        skin = (middle[:, 0] > middle[:, 1]) & (middle[:, 1] > middle[:, 2]) & (middle[:, 0] > 90)
        assert skin.mean() > 0.5
        # Turning the view changes what is drawn.
        changed = np.abs(front.astype(int) - turned.astype(int)).sum(-1) > 30
        assert changed.mean() > 0.05

        assert browser.evaluate("morphViewer.state.error || ''") == ""  # the WebGL context was not lost

        # Nothing was fetched from the network: every request is the file itself or inline data.
        urls = [e["params"]["request"]["url"] for e in browser.events if e.get("method") == "Network.requestWillBeSent"]
        assert urls and all(u.startswith(("file:", "data:")) for u in urls), urls
        assert not [e for e in browser.events if e.get("method") == "Runtime.exceptionThrown"]
    finally:
        browser.close()
