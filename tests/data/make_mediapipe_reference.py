"""Writes ``mediapipe_reference.json``: the real MediaPipe's outputs on the astronaut photo and variants.

Not part of the test suite: run it in a throwaway environment that has MediaPipe, e.g.

    python3 -m venv /tmp/mpenv && /tmp/mpenv/bin/pip install mediapipe==0.10.21
    /tmp/mpenv/bin/python tests/data/make_mediapipe_reference.py

It runs MediaPipe 0.10.21's legacy ``solutions.face_detection`` (short- and full-range models,
min_detection_confidence 0.5) and ``solutions.face_mesh`` (static_image_mode, 468 points) on
``assets/astronaut.png`` (NASA, public domain) as it is, turned 90° clockwise, mirrored, and
as grey. Coordinates are stored in morph's pixel convention: MediaPipe's normalised x, y times
the image size plus 0.5 (MediaPipe samples with pixel centres on integers), z times the width.
"""

import json
from pathlib import Path

import mediapipe as mp
import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
VARIANTS = {
    "astronaut": lambda a: a,
    "astronaut_rot90": lambda a: np.ascontiguousarray(np.rot90(a, k=-1)),
    "astronaut_mirror": lambda a: np.ascontiguousarray(a[:, ::-1]),
    "astronaut_gray": lambda a: np.repeat(np.round(a.mean(-1, keepdims=True)).astype(np.uint8), 3, -1),
}


def main():
    base = np.asarray(Image.open(HERE.parents[1] / "assets" / "astronaut.png").convert("RGB"))
    detectors = {kind: mp.solutions.face_detection.FaceDetection(min_detection_confidence=0.5, model_selection=m)
                 for m, kind in ((0, "short"), (1, "full"))}
    mesh = mp.solutions.face_mesh.FaceMesh(static_image_mode=True, max_num_faces=5, refine_landmarks=False,
                                           min_detection_confidence=0.5)
    out = {"mediapipe": mp.__version__, "convention": "morph pixels (x, y) = normalised * size + 0.5; z = normalised z * width"}
    for name, make in VARIANTS.items():
        image = make(base)
        h, w = image.shape[:2]
        entry = {"size": [w, h]}
        for kind, detector in detectors.items():
            faces = []
            for d in detector.process(image).detections or []:
                b = d.location_data.relative_bounding_box
                faces.append({"score": round(d.score[0], 5),
                              "box": [round(v, 3) for v in (b.xmin * w + .5, b.ymin * h + .5,
                                                              (b.xmin + b.width) * w + .5, (b.ymin + b.height) * h + .5)],
                              "keypoints": [[round(k.x * w + .5, 3), round(k.y * h + .5, 3)]
                                            for k in d.location_data.relative_keypoints]})
            entry[f"detections_{kind}"] = faces
        entry["meshes"] = [[[round(p.x * w + .5, 3), round(p.y * h + .5, 3), round(p.z * w, 3)] for p in f.landmark]
                           for f in mesh.process(image).multi_face_landmarks or []]
        out[name] = entry
        print(name, len(entry["detections_short"]), len(entry["detections_full"]), len(entry["meshes"]))
    (HERE / "mediapipe_reference.json").write_text(json.dumps(out, separators=(",", ":")))


if __name__ == "__main__":
    main()
