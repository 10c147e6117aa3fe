"""morph train and its pieces: the network, the data format, the loader, augmentation, synth,
training (it learns; checkpoints; resume; SIGKILL; Ctrl-C; DDP) and the bad inputs."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from cli import app
from cli.fitting.crop import make_crop
from cli.defaults import load_model
from cli.files import read_landmarks
from cli.fitting.scene import FaceScene
from cli.training import (MIRROR_68, AugmentConfig, BatchStream, Dataset, NetworkFileError,
                          ParameterRegressor, ShardWriter, TrainConfig, augment, split, synthesize,
                          train)
from cli.training.checkpoint import load_checkpoint
from cli.training.loader import Batch
from cli.training.shards import Sample
from cli.training.validate import validate
from morphable import Parameters, default_lighting
from synthetic import make_model

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()
MORPH = [sys.executable, "-c", "from cli import run; run()"]


@pytest.fixture(scope="module")
def face_model():
    return load_model()


@pytest.fixture(scope="module")
def synth_data(tmp_path_factory, face_model):
    """48 synthetic faces at 128 px (two shards of 24), shared by the tests below."""
    out = tmp_path_factory.mktemp("synth") / "data"
    synthesize(face_model, out, 48, seed=5, resolution=128, shard_size=24)
    return out


def quick_config(data: Path, **changes) -> TrainConfig:
    config = TrainConfig(steps=6, batch_size=8, resolution=128, lr=1e-3, warmup_steps=2, ema=0.0, device="cpu",
                         checkpoint_every=3, log_every=1, val_every=1000, val_fraction=0.1, datasets=[str(data)])
    config.augment = AugmentConfig(flip=0.5, rotation=10.0)
    for key, value in changes.items():
        setattr(config, key, value)
    return config


# -- the network -------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [128, 224])
def test_untrained_network_predicts_the_mean_face_centred_in_the_crop(face_model, size):
    net = ParameterRegressor.for_model(face_model, "resnet18", size)
    params = net(torch.rand(2, 3, size, size))
    assert params.batch_size == 2
    for group in ("identity", "expression", "albedo"):
        assert torch.equal(getattr(params, group), torch.zeros_like(getattr(params, group)))
    assert torch.equal(params.lighting, default_lighting(2))
    assert torch.equal(params.rotation, torch.zeros(2, 3))
    # The mean face's landmarks, frontal: the crop made from them is the whole input.
    landmarks = FaceScene(face_model, size).landmarks(params.detach())[0]
    crop = make_crop(landmarks, size)
    assert crop.scale == pytest.approx(1.0, abs=1e-5)
    assert (crop.origin_x, crop.origin_y) == pytest.approx((0.0, 0.0), abs=1e-3)


def test_network_sizes_follow_the_model():
    model = make_model(n_identity=7, n_expression=3, n_albedo=2)
    net = ParameterRegressor.for_model(model, "resnet34", 128)
    params = net(torch.rand(1, 3, 128, 128))
    assert params.sizes == (7, 3, 2)
    with pytest.raises(ValueError, match=r"\[B,3,128,128\]"):
        net(torch.rand(1, 3, 224, 224))


def test_weights_round_trip_and_model_check(tmp_path, face_model):
    net = ParameterRegressor.for_model(face_model, "resnet18", 128)
    torch.nn.init.normal_(net.heads["pose"].weight, std=0.01)
    net.eval()
    images = torch.rand(2, 3, 128, 128)
    path = tmp_path / "net.safetensors"
    net.save(path)
    again = ParameterRegressor.from_file(path, face_model).eval()
    assert torch.equal(again(images).to_flat(), net(images).to_flat())
    with pytest.raises(NetworkFileError, match="made for model 'morph-face-mh'.*not for 'synthetic-ellipsoid'"):
        ParameterRegressor.from_file(path, make_model())
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(NetworkFileError, match="not a readable network file"):
        ParameterRegressor.from_file(broken)
    state = load_file(str(path))
    state["heads.pose.weight"] = state["heads.pose.weight"][:, :10].contiguous()
    save_file(state, str(broken), metadata=net.metadata())
    with pytest.raises(NetworkFileError, match="do not fit"):
        ParameterRegressor.from_file(broken)


# -- data --------------------------------------------------------------------------------------
def test_synth_same_seed_same_bytes(tmp_path, face_model, synth_data):
    a, b = tmp_path / "a", tmp_path / "b"
    synthesize(face_model, a, 6, seed=11, resolution=128)
    synthesize(face_model, b, 6, seed=11, resolution=128, images=True)
    assert (a / "shard-00000.safetensors").read_bytes() == (b / "shard-00000.safetensors").read_bytes()
    synthesize(face_model, tmp_path / "c", 6, seed=12, resolution=128)
    assert (tmp_path / "c" / "shard-00000.safetensors").read_bytes() != (a / "shard-00000.safetensors").read_bytes()
    # --images: a PNG, its .pts (1-based) and parameters; the stored landmarks are the model's under them.
    shard = load_file(str(a / "shard-00000.safetensors"))
    image = iio.imread(b / "images" / "synth_000002.png")
    assert np.array_equal(image, shard["images"][2].permute(1, 2, 0).numpy())
    torch.testing.assert_close(read_landmarks(b / "images" / "synth_000002.pts"), shard["landmarks"][2], atol=1e-3,
                               rtol=0)
    params = Parameters.load(b / "images" / "synth_000002.params.safetensors")
    projected = FaceScene(face_model, 128).landmarks(params)[0]
    torch.testing.assert_close(projected, shard["landmarks"][2], atol=1e-3, rtol=0)
    # The face is drawn where its landmarks are: the image differs from the background there.
    assert 0 < projected.min() and projected.max() < 128


def test_symmetric_expressions_move_both_sides_and_keep_each_units_spread(face_model):
    from cli.training.synth import OPPOSED_PAIRS, SynthConfig, mirror_partners, sample_parameters

    names = face_model.expression_names
    partner = mirror_partners(names, len(names), OPPOSED_PAIRS)
    assert names[partner[names.index("mouthSmileLeft")]] == "mouthSmileRight"
    assert partner[names.index("jawLeft")] == -1 and partner[names.index("jawOpen")] == -1

    def draws(symmetry):
        config = SynthConfig(expression_symmetry=symmetry)
        return torch.stack([sample_parameters(face_model, torch.Generator().manual_seed(i), config).expression[0]
                            for i in range(1500)])

    independent, symmetric = draws(0.0), draws(0.8)
    smile = [names.index("mouthSmileLeft"), names.index("mouthSmileRight")]
    jaw = [names.index("jawLeft"), names.index("jawRight")]
    assert abs(torch.corrcoef(independent[:, smile].T)[0, 1]) < 0.1
    assert torch.corrcoef(symmetric[:, smile].T)[0, 1] > 0.7
    assert abs(torch.corrcoef(symmetric[:, jaw].T)[0, 1]) < 0.1  # opposite movements stay independent
    # Mixing keeps each unit's spread (the paired kicks add a little).
    ratio = symmetric.std(0) / independent.std(0)
    assert (ratio > 0.9).all() and (ratio < 1.25).all()


def test_dataset_reads_back_what_was_written(tmp_path):
    writer = ShardWriter(tmp_path / "d", 128, shard_size=3)
    images = torch.randint(0, 256, (7, 3, 128, 128), dtype=torch.uint8)
    for i in range(7):
        writer.add(Sample(images[i], torch.full((68, 2), float(i)), f"photo{i}"))
    writer.flush()
    dataset = Dataset([tmp_path / "d"])
    assert len(dataset) == 7 and [s.count for s in dataset.shards] == [3, 3, 1]
    train_ids, val_ids = split(dataset, val_fraction=0.2)
    assert val_ids.tolist() == [[1, 2], [2, 0]]  # the last 20 % (rounded up) of the folder
    assert len(train_ids) == 5
    stream = BatchStream(dataset, torch.cat([train_ids, val_ids]), batch_size=7)
    batch = stream.read(torch.tensor([[2, 0], [0, 1]]))
    assert torch.equal((batch.images * 255).round().to(torch.uint8), images[[6, 1]])
    assert batch.landmarks[:, 0, 0].tolist() == [6.0, 1.0] and batch.params is None


def test_loader_order_is_seeded_bounded_and_split_across_processes(synth_data):
    dataset = Dataset([synth_data])
    ids, _ = split(dataset, val_fraction=0.1)
    one = BatchStream(dataset, ids, 8, seed=3, window=1)
    again = BatchStream(dataset, ids, 8, seed=3, window=1)
    assert torch.equal(one.global_ids(4), again.global_ids(4))
    assert not torch.equal(one.order(0), one.order(1))  # every epoch is reshuffled
    # window=1: every batch but the ones straddling a shard boundary comes from one shard.
    order = one.order(0)
    assert (order[1:, 0] != order[:-1, 0]).sum() == 1
    halves = [BatchStream(dataset, ids, 8, seed=3, rank=r, world=2, window=1).batch(2) for r in (0, 1)]
    whole = one.batch(2)
    assert torch.equal(torch.cat([h.images for h in halves]), whole.images)


def test_augmentation_moves_landmarks_with_the_image_and_does_not_depend_on_the_split():
    size = 128
    images = torch.zeros(4, 3, size, size)
    landmarks = torch.rand(4, 68, 2) * 60 + 34
    points = landmarks[:, 30]  # a dot under landmark 30 of every image
    for b in range(4):
        x, y = int(points[b, 0]), int(points[b, 1])
        images[b, :, y - 2:y + 3, x - 2:x + 3] = 1.0
        landmarks[b, 30] = torch.tensor([x + 0.5, y + 0.5])
    batch = Batch(images, landmarks, torch.ones(4, 68), None, torch.zeros(4, dtype=torch.bool))
    config = AugmentConfig(brightness=0, contrast=0, saturation=0, hue=0, grayscale=0, flip=0.5, rotation=20, scale=0.2)
    out = augment(batch, config, seed=1, step=7)
    rows, cols = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    for b in range(4):
        w = out.images[b, 0]
        centroid = torch.stack([(cols * w).sum(), (rows * w).sum()]) / w.sum()
        # After a flip, the dot is under the mirror partner of point 30, which is point 30 (nose tip).
        torch.testing.assert_close(centroid, out.landmarks[b, 30], atol=0.25, rtol=0)
    first = augment(Batch(images[:2], landmarks[:2], torch.ones(2, 68), None, torch.zeros(2, dtype=torch.bool)),
                    config, seed=1, step=7, rows=slice(0, 2), global_size=4)
    torch.testing.assert_close(first.images, out.images[:2])


def test_mirror_permutation_is_an_involution_that_maps_the_mean_face_onto_itself(face_model):
    mirror = torch.tensor(MIRROR_68)
    assert torch.equal(mirror[mirror], torch.arange(68))
    points = face_model.shape_mean[face_model.landmarks]
    mirrored = points * torch.tensor([-1.0, 1.0, 1.0])
    # The mean face is nearly symmetric: each point's mirror image lies on its partner
    # (a few jaw and brow points of the default model sit up to ~17 mm off their partners).
    assert (mirrored[mirror] - points).norm(dim=-1).median() < 0.5
    nearest = torch.cdist(points, mirrored).argmin(1)
    assert (nearest == mirror).sum() >= 60


# -- training ----------------------------------------------------------------------------------
def test_training_lowers_the_landmark_error(tmp_path, synth_data, face_model):
    """Training learns: the saved network's landmarks on the faces it was trained on are much
    closer than the neutral face's, and the logged landmark loss falls.

    Measured on a 2-core AMD EPYC over 10 runs (seeds 0-5, 1 and 2 torch threads), 80 steps:
    trained/neutral landmark error 0.585-0.642, last/first ten logged landmark losses 0.30-0.42;
    with lr = 0 (a network that does not learn) 1.000 and 0.96. The bounds sit between, about
    25 % from either side. Held-out faces are not asserted: after 40-80 steps on 43 faces their
    ratio spans 0.75-1.04 with the seed and thread count (it failed at 0.92 on one CPU).
    """
    steps = 80
    config = quick_config(synth_data, steps=steps, batch_size=8, lr=2e-3, warmup_steps=5, checkpoint_every=steps,
                          val_every=steps)
    config.augment = AugmentConfig(flip=0.0, rotation=0.0, shift=0.0, scale=0.0)
    train(config, tmp_path / "run", progress=False)
    rows = (tmp_path / "run" / "log.csv").read_text().splitlines()
    header = rows[0].split(",")
    landmark = [float(r.split(",")[header.index("landmark")]) for r in rows[1:]]
    assert np.mean(landmark[-10:]) < 0.7 * np.mean(landmark[:10])  # batch 8: noisy steps, so 10 of each
    assert (tmp_path / "run" / "val" / f"step_{steps:06d}.png").is_file()
    net = ParameterRegressor.from_file(tmp_path / "run" / "network.safetensors", face_model).eval()
    assert net.input_size == 128
    dataset = Dataset([synth_data])
    train_ids, _ = split(dataset, config.val_fraction, config.val_max)
    stream = BatchStream(dataset, train_ids, 8)
    metrics, _ = validate(net, FaceScene(face_model, 128), stream, train_ids, "cpu")
    assert metrics["landmark_px"] < 0.8 * metrics["neutral_px"]


def test_checkpoint_round_trip_and_resume_equivalence(tmp_path, synth_data):
    config = quick_config(synth_data, ema=0.9)
    train(config, tmp_path / "whole", progress=False)
    train(quick_config(synth_data, ema=0.9), tmp_path / "halves", progress=False, stop_after=3)
    state = load_checkpoint(tmp_path / "halves" / "last.ckpt")
    assert state["step"] == 3 and state["epoch"] == 0 and state["batch"] == 3
    torch.load(tmp_path / "halves" / "last.ckpt", weights_only=True)  # plain tensors and containers only
    train(None, tmp_path / "halves", resume=True, progress=False)
    a = load_checkpoint(tmp_path / "whole" / "last.ckpt")
    b = load_checkpoint(tmp_path / "halves" / "last.ckpt")
    assert a["step"] == b["step"] == 6
    for key in a["network"]:
        assert torch.equal(a["network"][key], b["network"][key]), key
    for key in a["ema"]:
        assert torch.equal(a["ema"][key], b["ema"][key]), key
    log = (tmp_path / "halves" / "log.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in log[1:]] == ["1", "2", "3", "4", "5", "6"]


def test_validation_datasets_are_held_out_whole(tmp_path, synth_data, face_model, capsys):
    """With validation folders, all of the training folders are trained on and validation reads only those."""
    held = tmp_path / "held"
    synthesize(face_model, held, 10, seed=9, resolution=128)
    config = quick_config(synth_data, steps=2, val_every=2, validation=[str(held)])
    result = train(config, tmp_path / "run", progress=False)
    assert "48 training / 10 validation samples from 1 dataset(s) + 1 for validation" in capsys.readouterr().out
    net = ParameterRegressor.from_file(tmp_path / "run" / "network.safetensors", face_model).eval()
    stream = BatchStream(Dataset([held]), torch.tensor([[0, i] for i in range(10)]), 10)
    metrics, _ = validate(net, FaceScene(face_model, 128), stream, torch.tensor([[0, i] for i in range(10)]), "cpu")
    assert result.last_validation["landmark_px"] == pytest.approx(metrics["landmark_px"], rel=1e-5)


def _write_toml(path: Path, config: TrainConfig) -> Path:
    from cli.training.config import to_toml
    path.write_text(to_toml(config))
    return path


def _wait_for(path: Path, process: subprocess.Popen, timeout: float = 120) -> None:
    start = time.time()
    while not path.exists():
        assert process.poll() is None, process.communicate()
        assert time.time() - start < timeout, f"{path} did not appear"
        time.sleep(0.1)


def test_sigkill_during_training_then_resume(tmp_path, synth_data):
    config = _write_toml(tmp_path / "c.toml", quick_config(synth_data, steps=30, checkpoint_every=2))
    run = tmp_path / "run"
    process = subprocess.Popen(MORPH + ["train", "--config", str(config), "--out", str(run)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path)
    _wait_for(run / "last.ckpt", process)
    time.sleep(0.5)
    process.send_signal(signal.SIGKILL)
    process.wait()
    saved = load_checkpoint(run / "last.ckpt")["step"]
    assert 2 <= saved < 30 and saved % 2 == 0
    result = runner.invoke(app, ["train", "--resume", str(run), "--steps", str(saved + 2)])
    assert result.exit_code == 0, result.output
    assert load_checkpoint(run / "last.ckpt")["step"] == saved + 2


def test_ctrl_c_saves_and_stops(tmp_path, synth_data):
    config = _write_toml(tmp_path / "c.toml", quick_config(synth_data, steps=200, checkpoint_every=100))
    run = tmp_path / "run"
    process = subprocess.Popen(MORPH + ["train", "--config", str(config), "--out", str(run)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    _wait_for(run / "log.csv", process)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert "interrupted after step" in err and "Traceback" not in err
    step = load_checkpoint(run / "last.ckpt")["step"]
    assert 1 <= step < 200 and (run / "network.safetensors").is_file()


@pytest.mark.skipif(shutil.which("torchrun") is None and not (Path(sys.executable).parent / "torchrun").exists(),
                    reason="needs torchrun")
def test_two_process_ddp_matches_one_process(tmp_path, synth_data):
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
    morph = shutil.which("morph") or str(Path(sys.executable).parent / "morph")
    config = _write_toml(tmp_path / "c.toml", quick_config(synth_data, steps=4, checkpoint_every=4))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([torchrun, "--standalone", "--nproc_per_node=2", "--no-python", morph, "train", "--config",
                           str(config), "--out", str(tmp_path / "ddp")], capture_output=True, text=True, env=env,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    train(quick_config(synth_data, steps=4, checkpoint_every=4), tmp_path / "one", progress=False)

    def losses_of(run):
        rows = (run / "log.csv").read_text().splitlines()
        header = rows[0].split(",")
        return np.array([float(r.split(",")[header.index("total")]) for r in rows[1:]])

    ddp, one = losses_of(tmp_path / "ddp"), losses_of(tmp_path / "one")
    assert len(ddp) == len(one) == 4
    # Step 1 starts from the same weights on the same global batch (zero heads: BatchNorm's
    # per-process statistics cannot matter yet); later steps differ only by those statistics.
    assert ddp[0] == pytest.approx(one[0], rel=1e-3)
    np.testing.assert_allclose(ddp, one, rtol=0.1)


# -- bad input ---------------------------------------------------------------------------------
def _error_line(result, words):
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("morph: error: ") and words in lines[0], result.stderr
    assert "Traceback" not in result.output


def test_bad_datasets_are_one_line(tmp_path, synth_data):
    empty = tmp_path / "empty"
    empty.mkdir()
    _error_line(runner.invoke(app, ["train", str(empty), "--out", str(tmp_path / "r1")]), "not a morph dataset")
    _error_line(runner.invoke(app, ["train", str(tmp_path / "nope"), "--out", str(tmp_path / "r2")]),
                "no such dataset folder")
    corrupt = tmp_path / "corrupt"
    shutil.copytree(synth_data, corrupt)
    shard = corrupt / "shard-00001.safetensors"
    shard.write_bytes(shard.read_bytes()[:5000])
    _error_line(runner.invoke(app, ["train", str(corrupt), "--out", str(tmp_path / "r3")]),
                "shard-00001.safetensors: not a readable shard")
    no_shards = tmp_path / "no_shards"
    ShardWriter(no_shards, 128).flush()
    _error_line(runner.invoke(app, ["train", str(no_shards), "--out", str(tmp_path / "r4")]), "the dataset is empty")
    _error_line(runner.invoke(app, ["train", "--resume", str(tmp_path / "missing")]), "no such run folder")
    _error_line(runner.invoke(app, ["train", str(synth_data), "--out", str(tmp_path / "r5"), "--resolution", "224"]),
                "holds 128 px crops")
    assert not (tmp_path / "r3" / "last.ckpt").exists()


def test_nan_loss_stops_with_the_term_and_keeps_the_last_checkpoint(tmp_path, synth_data):
    data = tmp_path / "data"
    shutil.copytree(synth_data, data)
    run = tmp_path / "run"
    train(quick_config(data, steps=3, checkpoint_every=3, val_fraction=0.0), run, progress=False)
    before = (run / "last.ckpt").read_bytes()
    for shard in data.glob("shard-*.safetensors"):
        tensors = load_file(str(shard))
        tensors["landmarks"][:, 5] = float("nan")
        save_file(tensors, str(shard), metadata={"sources": "[]"})
    result = runner.invoke(app, ["train", "--resume", str(run), "--steps", "6"])
    _error_line(result, "training diverged at step 4: loss term 'landmark' is not finite")
    assert (run / "last.ckpt").read_bytes() == before


def test_network_for_another_model_is_one_line(tmp_path, face_model):
    other = tmp_path / "other.safetensors"
    make_model().save(other)
    net = tmp_path / "net.safetensors"
    ParameterRegressor.for_model(face_model, "resnet18", 128).save(net)
    result = runner.invoke(app, ["predict", str(ROOT / "assets" / "astronaut.png"), "--network", str(net),
                                 "--model", str(other), "--out", str(tmp_path / "out")])
    _error_line(result, "made for model 'morph-face-mh'")
    assert not (tmp_path / "out").exists()


def test_prepare_logs_and_skips_failures_and_resumes(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    shutil.copy(ROOT / "assets" / "astronaut.png", photos / "astronaut.png")
    points = "".join(f"{200 + 2 * (i % 17)} {150 + 3 * (i // 17)}\n" for i in range(68))  # any 68 points
    (photos / "astronaut.pts").write_text("version: 1\nn_points: 68\n{\n" + points + "}\n")
    iio.imwrite(photos / "blank.png", np.full((64, 64, 3), 128, np.uint8))
    (photos / "broken.png").write_text("not an image")
    out = tmp_path / "data"
    result = runner.invoke(app, ["prepare", str(photos), "--out", str(out), "--resolution", "128"])
    assert result.exit_code == 0, result.output
    assert "1 added, 0 already done or failed before, 2 failed now" in result.stdout
    assert "blank.png" in result.stderr and "broken.png: cannot read the image" in result.stderr
    log = (out / "prepare.log").read_text()
    assert "blank.png" in log and "broken.png" in log
    index = json.loads((out / "dataset.json").read_text())
    assert index["count"] == 1 and len(index["failed"]) == 2
    shard = load_file(str(out / "shard-00000.safetensors"))
    truth = read_landmarks(photos / "astronaut.pts")
    torch.testing.assert_close(shard["landmarks"][0], make_crop(truth, 128).to_crop(truth))
    again = runner.invoke(app, ["prepare", str(photos), "--out", str(out), "--resolution", "128"])
    assert "0 added, 3 already done or failed before, 0 failed now" in again.stdout


# -- the shipped network -----------------------------------------------------------------------
def test_the_shipped_network_lands_the_astronauts_landmarks(face_model):
    from cli.defaults import DEFAULT_NETWORK, load_network
    from cli.detect import detect_landmarks
    from cli.files import load_image
    from cli.training import predict

    net = load_network(None, face_model)
    assert DEFAULT_NETWORK.stat().st_size < 25e6
    image = load_image(ROOT / "assets" / "astronaut.png")
    detected, _ = detect_landmarks(image)
    params = predict(net, image, detected)
    predicted = FaceScene(face_model, 1).landmarks(params)[0]
    size = (detected.amax(0) - detected.amin(0)).prod().sqrt()  # the face's size: sqrt of its box's area
    errors = (predicted - detected).norm(dim=-1)
    # Measured: inner 51 points 2.6 % of the face size, all 68 3.8 % (the network trained on synthetic
    # faces only: 6.9 % and 7.1 %). Float rounding moves these by far less than the margin.
    assert errors[17:].mean() < 0.04 * size
    assert errors.mean() < 0.055 * size


def test_predict_writes_a_fit_folder_without_a_loss_curve(tmp_path):
    from cli.report import OUTPUT_FILES

    result = runner.invoke(app, ["predict", str(ROOT / "assets" / "astronaut.png"), "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    folder = tmp_path / "astronaut"
    assert sorted(p.name for p in folder.iterdir()) == sorted(set(OUTPUT_FILES) - {"loss_curve.svg"})
    assert "No optimisation" in (folder / "report.html").read_text()


def test_a_checkpoint_from_before_mirror_params_resumes_without_them():
    from cli.training.config import from_dict, to_dict

    current = to_dict(TrainConfig())
    assert from_dict(current).augment.mirror_params  # today's default round-trips
    old = current | {"augment": {k: v for k, v in current["augment"].items() if k != "mirror_params"}}
    assert not from_dict(old).augment.mirror_params
    assert "mirror_params" not in old["augment"]  # the saved dict itself is left alone
