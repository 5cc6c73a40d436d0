"""Export for printing: STL plates are closed solids of the designed heights, and the manifest describes them."""
from __future__ import annotations

import hashlib
import json
import math
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from stl import mesh

from lab.export import export_network, heights_from_stl, plate_mesh, plate_triangles
from model.checkpoint import load_checkpoint, save_checkpoint
from model.config import network_config_from_dict
from model.network import D2NN

PITCH_MM = 0.4
BASE_MM = 1.0
SMALL = {
    "name": "export-small",
    "freq_ghz": 400,
    "grid": {"neurons": 12, "pitch_mm": PITCH_MM},
    "layers": {"count": 3, "spacing_mm": 10},
    "input": {"object_size_mm": 3.2},
    "detector": {"layout": "lin2018", "region_size_mm": 0.4, "region_spacing_mm": 0.8},
}
QUANTIZED_STEP_MM = 0.05


def _export(tmp_dir: Path, overrides: dict | None = None, **kwargs):
    data = json.loads(json.dumps(SMALL))
    data.update(overrides or {})
    torch.manual_seed(1)
    net = D2NN(network_config_from_dict(data, "test"))
    with torch.no_grad():  # spread the heights over the whole range, with some exactly equal neighbours
        for layer in net.layers:
            layer.height_logits.mul_(4.0)
            layer.height_logits[:3, :3] = 0.0
    ckpt = save_checkpoint(tmp_dir / "net.pt", net, printed_layers=[0])
    out = tmp_dir / "export"
    return ckpt, out, export_network(ckpt, out, base_thickness_mm=BASE_MM, **kwargs)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    return _export(tmp_path_factory.mktemp("export"))


@pytest.fixture(scope="module")
def exported_quantized(tmp_path_factory):
    return _export(tmp_path_factory.mktemp("export_q"),
                   {"material": {"height_step_mm": QUANTIZED_STEP_MM, "max_height_mm": 1.0}})


def edge_defects(vectors: np.ndarray) -> dict:
    """Counts of what breaks a closed 2-manifold: degenerate triangles, undirected edges not used exactly
    twice, and edge pairs not traversed in opposite directions. Vertices are matched by exact float32."""
    points = np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1, 3)
    _, ids = np.unique(points, axis=0, return_inverse=True)
    tri = ids.reshape(-1, 3)
    degenerate = (tri[:, 0] == tri[:, 1]) | (tri[:, 1] == tri[:, 2]) | (tri[:, 2] == tri[:, 0])
    directed = tri[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2)
    _, edge, uses = np.unique(np.sort(directed, axis=1), axis=0, return_inverse=True, return_counts=True)
    forward = np.bincount(edge.ravel(), weights=directed[:, 0] < directed[:, 1])
    return {"degenerate": int(degenerate.sum()), "not_two_uses": int((uses != 2).sum()),
            "same_direction": int(((uses == 2) & (forward != 1)).sum())}


def signed_volume(vectors: np.ndarray) -> float:
    v = vectors.astype(np.float64)
    return float(np.einsum("ij,ij->i", v[:, 0], np.cross(v[:, 1], v[:, 2])).sum() / 6)


def pillar_volume_mm3(height_mm: np.ndarray) -> float:
    return float((PITCH_MM ** 2 * (BASE_MM + height_mm)).sum())


def layer_files(out: Path, i: int):
    return out / f"layer{i}.stl", np.load(out / f"layer{i}_height_m.npy")


# ---- round trip and physics ------------------------------------------------------------------------
def test_stl_heights_round_trip_to_design_heights_within_1um(exported):
    ckpt, out, manifest = exported
    net, _ = load_checkpoint(ckpt)
    net.eval()
    for i in range(3):
        stl_path, design_m = layer_files(out, i)
        back_m = heights_from_stl(stl_path, 12, PITCH_MM, BASE_MM)
        assert np.abs(back_m - design_m).max() < 1e-6
        twin_m = net.layers[i].heights_m().detach().double().numpy()
        assert np.abs(back_m - twin_m).max() < 1e-6


def test_transmission_from_stl_heights_matches_twin_phase_and_amplitude(exported):
    ckpt, out, _ = exported
    net, _ = load_checkpoint(ckpt)
    net.eval()
    m = net.material
    for i in range(3):
        h_m = heights_from_stl(out / f"layer{i}.stl", 12, PITCH_MM, BASE_MM)
        phase = 2 * math.pi * (m.refractive_index - 1) * h_m / net.wavelength_m
        with torch.no_grad():
            twin = net.layers[i].transmission(net.wavelength_m, net.cfg.pitch_m).numpy()
        wrapped = np.angle(np.exp(1j * (phase - np.angle(twin))))
        assert np.abs(wrapped).max() < 1e-4
        amplitude = np.exp(-2 * math.pi * m.extinction_coefficient * h_m / net.wavelength_m)
        np.testing.assert_allclose(np.abs(twin), amplitude, rtol=1e-5)


# ---- the solid -------------------------------------------------------------------------------------
def test_stl_is_a_closed_two_manifold(exported):
    _, out, _ = exported
    for i in range(3):
        plate = mesh.Mesh.from_file(str(out / f"layer{i}.stl"))
        assert plate.is_closed(exact=True)
        assert edge_defects(plate.vectors) == {"degenerate": 0, "not_two_uses": 0, "same_direction": 0}


def test_stl_volume_equals_sum_of_pillar_volumes(exported):
    _, out, _ = exported
    for i in range(3):
        stl_path, design_m = layer_files(out, i)
        volume, _, _ = mesh.Mesh.from_file(str(stl_path)).get_mass_properties()
        assert volume == pytest.approx(pillar_volume_mm3(design_m * 1e3), rel=1e-6)


def test_stl_normals_point_outward(exported):
    _, out, _ = exported
    plate = mesh.Mesh.from_file(str(out / "layer0.stl"), calculate_normals=False)  # the normals as stored
    assert signed_volume(plate.vectors) > 0  # counter-clockwise seen from outside
    v = plate.vectors.astype(np.float64)
    winding = np.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0])
    assert np.all(np.einsum("ij,ij->i", winding, plate.normals) > 0)  # stored normals agree with winding
    np.testing.assert_allclose(np.linalg.norm(plate.normals, axis=1), 1.0, rtol=1e-5)
    bottom = np.all(v[:, :, 2] == 0, axis=1)
    assert bottom.any() and np.all(plate.normals[bottom, 2] < 0)


def test_stl_is_in_millimetres_centred_on_the_axis(exported):
    _, out, _ = exported
    v = mesh.Mesh.from_file(str(out / "layer0.stl")).vectors
    half = 12 * PITCH_MM / 2
    np.testing.assert_allclose(v[..., 0].min(), -half, atol=1e-6)
    np.testing.assert_allclose(v[..., 1].max(), half, atol=1e-6)
    assert v[..., 2].min() == 0 and BASE_MM < v[..., 2].max() < BASE_MM + 1.1


# ---- height maps and manifest ----------------------------------------------------------------------
def test_height_maps_are_float64_metres_within_zero_and_max_height(exported):
    ckpt, out, manifest = exported
    max_height_m = manifest["material"]["max_height_m"]
    assert max_height_m == pytest.approx(0.75e-3 / 0.7227, rel=1e-3)
    for i in range(3):
        _, h = layer_files(out, i)
        assert h.dtype == np.float64 and h.shape == (12, 12)
        assert h.min() >= 0 and h.max() <= max_height_m
        assert h.max() > 0.5 * max_height_m  # metres, not millimetres


def test_quantized_heights_export_as_multiples_of_the_step(exported_quantized):
    _, out, manifest = exported_quantized
    step_m = QUANTIZED_STEP_MM * 1e-3
    assert manifest["material"]["height_step_m"] == pytest.approx(step_m)
    for i in range(3):
        stl_path, h = layer_files(out, i)
        np.testing.assert_allclose(h / step_m, np.round(h / step_m), atol=1e-9)
        assert h.min() >= 0 and h.max() <= manifest["material"]["max_height_m"] + 1e-12
        assert len(np.unique(np.round(h / step_m))) > 3
        back = heights_from_stl(stl_path, 12, PITCH_MM, BASE_MM)
        np.testing.assert_allclose(back / step_m, np.round(h / step_m), atol=1e-4)


def test_manifest_sha256_matches_the_checkpoint_file(exported):
    ckpt, out, manifest = exported
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk == manifest
    assert manifest["checkpoint"]["sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    assert Path(manifest["checkpoint"]["path"]) == ckpt.resolve()
    for entry in manifest["layers"]:
        stl_bytes = (out / entry["stl"]).read_bytes()
        assert entry["stl_sha256"] == hashlib.sha256(stl_bytes).hexdigest()


def test_manifest_describes_geometry_material_and_stack(exported):
    _, _, manifest = exported
    assert manifest["format"] == "d2nn-lab/export-1"
    assert manifest["network"] == "export-small" and manifest["software"]["d2nn-lab"]
    assert manifest["freq_hz"] == pytest.approx(400e9)
    assert manifest["wavelength_m"] == pytest.approx(299_792_458 / 400e9)
    assert manifest["neurons"] == 12 and manifest["pitch_m"] == pytest.approx(0.4e-3)
    assert manifest["base_thickness_m"] == pytest.approx(1e-3)
    material = manifest["material"]
    assert material["name"] == "VeroBlackPlus RGD875"
    assert material["refractive_index"] == pytest.approx(1.7227)
    assert material["extinction_coefficient"] == pytest.approx(0.031)
    assert material["height_step_m"] == 0
    stack = manifest["layers"]
    assert [e["index"] for e in stack] == [0, 1, 2]
    assert [e["distance_from_object_m"] for e in stack] == pytest.approx([0.01, 0.02, 0.03])
    assert [e["printed"] for e in stack] == [True, False, False]
    assert [e["stl"] for e in stack] == ["layer0.stl", "layer1.stl", "layer2.stl"]
    assert manifest["output_distance_from_object_m"] == pytest.approx(0.04)
    assert manifest["layers_exported"] == [0, 1, 2]
    assert len(manifest["detector"]["regions"]) == 10
    assert manifest["detector"]["region_size_m"] == pytest.approx(0.4e-3)


def test_export_of_a_layer_subset_writes_only_those_layers(tmp_path):
    _, out, manifest = _export(tmp_path, layers=[2])
    assert sorted(p.name for p in out.iterdir()) == ["layer2.stl", "layer2_height_m.npy", "manifest.json"]
    assert manifest["layers_exported"] == [2]
    assert [e["exported"] for e in manifest["layers"]] == [False, False, True]
    assert "stl" not in manifest["layers"][0] and len(manifest["layers"]) == 3


@pytest.mark.parametrize("kwargs, message", [({"base_thickness_mm": 0.0}, "base_thickness_mm"),
                                             ({"layers": [3]}, "layers"), ({"layers": [1, 1]}, "duplicates")])
def test_export_rejects_bad_arguments_with_a_clear_message(exported, tmp_path, kwargs, message):
    ckpt, _, _ = exported
    with pytest.raises(ValueError, match=message):
        export_network(ckpt, tmp_path / "x", **kwargs)


def test_heights_from_stl_rejects_a_wrong_grid(exported):
    _, out, _ = exported
    with pytest.raises(ValueError, match="expected neurons × pitch"):
        heights_from_stl(out / "layer0.stl", 10, PITCH_MM, BASE_MM)


# ---- properties of the mesher ----------------------------------------------------------------------
LEVELS_MM = st.one_of(st.sampled_from([0.0, 0.0, 0.25, 0.5, 1.0]), st.floats(0.0, 1.04))
height_maps = st.tuples(st.integers(1, 5), st.integers(1, 5)).flatmap(
    lambda shape: arrays(np.float64, shape, elements=LEVELS_MM))


@settings(max_examples=60, deadline=None)
@given(height_maps)
@example(np.zeros((1, 1)))
@example(np.zeros((4, 3)))
@example(np.array([[1.0, 0.0], [0.0, 1.0]]))                     # pillars touching at one corner line
@example(np.array([[0.0, 0.5], [1.0, 0.0]]))
@example(np.array([[0.4, 0.1], [0.2, 0.3]]))                     # diagonal pair higher, four levels
@example(np.indices((5, 5)).sum(0) % 2 * 0.7)                   # checkerboard
def test_random_height_maps_give_closed_solids_of_the_right_volume(height_mm):
    triangles = plate_triangles(height_mm, PITCH_MM, BASE_MM).astype(np.float32)
    assert edge_defects(triangles) == {"degenerate": 0, "not_two_uses": 0, "same_direction": 0}
    assert signed_volume(triangles) == pytest.approx(pillar_volume_mm3(height_mm), rel=1e-6)
    plate = mesh.Mesh(np.zeros(len(triangles), dtype=mesh.Mesh.dtype))
    plate.vectors[:] = triangles
    plate.update_normals()
    assert plate.is_closed(exact=True)


@settings(max_examples=20, deadline=None)
@given(height_maps)
@example(np.indices((5, 5)).sum(0) % 2 * 0.7)
def test_random_height_maps_round_trip_through_stl(height_mm):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "plate.stl"
        plate_mesh(height_mm, PITCH_MM, BASE_MM).save(str(path))
        ny, nx = height_mm.shape
        if ny == nx:
            back_m = heights_from_stl(path, ny, PITCH_MM, BASE_MM)
            assert np.abs(back_m - height_mm * 1e-3).max() < 1e-9
