"""The d2nn-lab command line: contracts of DESIGN.md section 4 and one-line errors with exit 2."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from lab.cli import main
from model.checkpoint import load_checkpoint, save_checkpoint
from model.network import D2NN


@pytest.fixture
def checkpoint(tmp_path, tiny_config):
    return save_checkpoint(tmp_path / "model.pt", D2NN(tiny_config))


def _run(*args):
    return subprocess.run([sys.executable, "-m", "lab.cli", *args], capture_output=True, text=True, timeout=120)


def test_simulate_json_and_out_match_the_twin(tmp_path, checkpoint, capsys):
    image = np.zeros((28, 28))
    image[6:22, 12:16] = 1.0  # a "1"
    np.save(tmp_path / "one.npy", image)
    out = tmp_path / "intensity.npy"
    assert main(["simulate", str(checkpoint), "--input", str(tmp_path / "one.npy"), "--out", str(out), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    intensity = np.load(out)
    net, _ = load_checkpoint(checkpoint)
    net.eval()
    with torch.no_grad():
        expected = net.output_intensity(torch.from_numpy(image).float()[None])[0].numpy()
    assert intensity.shape == (32, 32) and np.allclose(intensity, expected, rtol=1e-5)
    energies = np.asarray(result["detector_energies"])
    assert len(energies) == 10 and result["predicted_class"] == int(energies.argmax())
    assert result["pitch_m"] == pytest.approx(0.4e-3)
    assert result["origin_m"][0] == pytest.approx(-15.5 * 0.4e-3)  # centre of pixel [0, 0]


def test_png_and_npy_inputs_give_the_same_result(tmp_path, checkpoint, capsys):
    import matplotlib.image
    image = np.random.default_rng(0).random((28, 28))
    np.save(tmp_path / "a.npy", image)
    matplotlib.image.imsave(tmp_path / "a.png", image, cmap="gray", vmin=0, vmax=1)
    main(["simulate", str(checkpoint), "--input", str(tmp_path / "a.npy"), "--json"])
    from_npy = json.loads(capsys.readouterr().out)["detector_energies"]
    main(["simulate", str(checkpoint), "--input", str(tmp_path / "a.png"), "--json"])
    from_png = json.loads(capsys.readouterr().out)["detector_energies"]
    assert np.allclose(from_npy, from_png, rtol=2e-2)  # PNG stores 8 bits


def test_evaluate_json_reports_accuracy_and_n(checkpoint, capsys):
    assert main(["evaluate", str(checkpoint), "--limit", "50", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n"] == 50 and 0.0 <= result["accuracy"] <= 1.0


@pytest.mark.parametrize("args, fragment", [
    (["train", "--config", "missing.yaml", "--out", "x"], "missing.yaml: no such config file"),
    (["evaluate", "nothing.pt"], "nothing.pt: no such checkpoint file"),
    (["evaluate", "configs/small-mnist.yaml"], "not a d2nn-lab checkpoint"),
    (["evaluate", "CKPT", "--data-dir", "/nonexistent"], "--data-dir /nonexistent: no train-images"),
    (["simulate", "CKPT", "--input", "img.txt"], "--input img.txt: no such file"),
])
def test_bad_input_is_one_line_and_exit_2(args, fragment, checkpoint):
    args = [str(checkpoint) if a == "CKPT" else a for a in args]
    if "--data-dir" in args:
        fragment = fragment.replace("train-images", "t10k-images")
    proc = _run(*args)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0] and "Traceback" not in proc.stderr


def test_bad_config_value_is_one_line_and_exit_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ngrid: {neurons: 10, pitch_mm: -1}\nlayers: {count: 1, spacing_mm: 1}\n"
                   "input: {object_size_mm: 1}\ndetector: {region_size_mm: 1}\n")
    proc = _run("train", "--config", str(bad), "--out", str(tmp_path / "o"))
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"d2nn-lab train: error: {bad}: grid.pitch_mm must be > 0 (got -1.0)"


def test_idx_folder_in_torchvision_layout_is_read(tmp_path, checkpoint, capsys):
    import gzip
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (7, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, 7, dtype=np.uint8)
    header_i = bytes([0, 0, 8, 3]) + np.array([7, 28, 28], ">u4").tobytes()
    header_l = bytes([0, 0, 8, 1]) + np.array([7], ">u4").tobytes()
    with gzip.open(raw / "t10k-images-idx3-ubyte.gz", "wb") as f:
        f.write(header_i + images.tobytes())
    (raw / "t10k-labels-idx1-ubyte").write_bytes(header_l + labels.tobytes())
    from model.data import load_idx_split
    x, y = load_idx_split(tmp_path, "test")
    assert torch.equal(y, torch.from_numpy(labels.astype(np.int64)))
    assert torch.allclose(x, torch.from_numpy(images / 255.0).float())
    assert main(["evaluate", str(checkpoint), "--data-dir", str(tmp_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == 7
