"""NET.yaml validation: every mistake is one ConfigError naming the file and the key."""
from __future__ import annotations

import pytest
import yaml

from model.config import load_network_config, network_config_from_dict
from model.schema import ConfigError


def _write(tmp_path, data, name="net.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("mutate, key_in_message", [
    (lambda d: d["grid"].update(pitch_mm=-0.4), "grid.pitch_mm must be > 0"),
    (lambda d: d["grid"].pop("neurons"), "missing key 'grid.neurons'"),
    (lambda d: d["layers"].update(spacing_cm=3), "unknown key 'layers.spacing_cm'"),
    (lambda d: d.update(freq_ghz="400 GHz"), "freq_ghz must be a number"),
    (lambda d: d["detector"].update(layout="hexagonal"), "detector.layout must be one of"),
    (lambda d: d["training"].update(dataset="cifar"), "training.dataset must be one of"),
    (lambda d: d["input"].update(object_size_mm=100.0), "input.object_size_mm"),
    (lambda d: d["layers"].update(distances_mm=[10, 10]), "distances_mm needs count + 1"),
    (lambda d: d.pop("detector"), "needs a 'detector' section"),
])
def test_bad_config_names_file_and_key(tmp_path, tiny_dict, mutate, key_in_message):
    mutate(tiny_dict)
    path = _write(tmp_path, tiny_dict)
    with pytest.raises(ConfigError) as err:
        load_network_config(path)
    message = str(err.value)
    assert str(path) in message and key_in_message in message
    assert "\n" not in message


def test_invalid_yaml_reports_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: x\ngrid: [1, 2\n")
    with pytest.raises(ConfigError, match=r"broken.yaml: line \d+ is not valid YAML"):
        load_network_config(path)


def test_units_are_converted_once_to_si(tiny_config):
    assert tiny_config.pitch_m == pytest.approx(0.4e-3)
    assert tiny_config.wavelength_m == pytest.approx(299_792_458 / 400e9)
    assert tiny_config.distances_m == pytest.approx([10e-3] * 4)
    # default max height = one 2π phase step: λ / (n − 1)
    assert tiny_config.max_height_m == pytest.approx(tiny_config.wavelength_m / (1.7227 - 1))


def test_shipped_configs_load_with_reference_physics():
    for name in ("reference-mnist", "small-mnist", "small-fashion"):
        cfg = load_network_config(f"configs/{name}.yaml")
        assert cfg.freq_ghz == 400 and cfg.grid.pitch_mm == 0.4 and cfg.layers.count == 5
        assert cfg.layers.spacing_mm == 30 and cfg.material.refractive_index == pytest.approx(1.7227)
    ref = load_network_config("configs/reference-mnist.yaml")
    assert ref.grid.neurons == 200  # 8 cm × 8 cm at 0.4 mm


def test_round_trip_through_dict(tiny_config):
    again = network_config_from_dict(tiny_config.to_dict(), "again")
    assert again == tiny_config
