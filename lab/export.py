"""Export a trained network for printing: per layer a height map (.npy, metres) and a watertight STL
(millimetres), plus ``manifest.json`` describing the stack; and read an STL back into a height map.

The plate solid
---------------
A plate is a base slab of thickness ``b`` under ``ny × nx`` square pillars; pillar (i, j) rises to
``z = b + h[i, j]``. Row i ↔ y, column j ↔ x (DESIGN.md), the plate centred on the optical axis:
pixel centres at ``x_j = (j − (nx − 1)/2)·pitch``, ``y_i = (i − (ny − 1)/2)·pitch``; the bottom of the
base at z = 0, the relief towards +z.

The surface is built as the boundary of a union of prisms over a planar tiling (one tile per pixel,
plus a ring of zero-height "outside" tiles): a top face per tile, a vertical wall on every tile edge
whose two tiles differ in height, a flat bottom. To avoid T-junctions, a wall is split on its two
vertical sides at the heights of every other tile touching that vertical line.

Diagonal contact. Where the two diagonally opposite pixels of a corner are both taller than the other
two (a checkerboard corner), the solid touches itself along a vertical segment and four walls would
share one edge — not a 2-manifold. At such a corner the grid vertex P is split into two vertices
A = P + a·d, B = P − a·d on the diagonal d of the taller pair, joined by a tiny edge that the taller
pair now shares (they are connected by a sliver 2a√2 wide, a = 1e-3 pitch: 0.4 µm at 0.4 mm). A and B
lie on the diagonal so that every tile keeps its area to first order in a (the shoelace terms cancel);
the residual, of order a² per pair of neighbouring split corners, is ~1e-7 of the plate's volume. Every
vertex of the tiling then has three tiles around it, and any set of raised tiles among three has a
manifold boundary.
"""
from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
from stl import Mode, mesh

from model.checkpoint import file_sha256, load_checkpoint

FORMAT = "d2nn-lab/export-1"
# Half-length of the connecting edge at a checkerboard corner, as a fraction of the pitch: far below any
# printer's resolution, far above float32 rounding of the coordinates (about 1e-7 of the plate size).
SPLIT_FRACTION = 1e-3

# Quadrant roles of the four tiles around a grid corner, counter-clockwise: NE, NW, SW, SE.
NE, NW, SW, SE = range(4)
# Vertex slots per grid corner: 0 = the corner P itself, 1 = A, 2 = B (used only at split corners).
# Split type: 0 none; 1 the NE–SW pair is connected (d = (1, 1)); 2 the NW–SE pair (d = (−1, 1)).
_SPLIT_DIRECTION = np.array([[0.0, 0.0], [1.0, 1.0], [-1.0, 1.0]])
# (first, last) vertex slot of the corner's chain in each tile's counter-clockwise boundary, by
# [split type, role]. A connected tile passes (outside vertex, inside vertex); the others, one vertex:
# the inside vertex of their counter-clockwise neighbour around the corner.
_CHAIN = np.array([
    [[0, 0], [0, 0], [0, 0], [0, 0]],
    [[2, 1], [2, 2], [1, 2], [1, 1]],
    [[1, 1], [2, 1], [2, 2], [1, 2]],
])
# Which tiles touch each vertex slot, by [split type, slot, role].
_TOUCH = np.array([
    [[1, 1, 1, 1], [0, 0, 0, 0], [0, 0, 0, 0]],
    [[0, 0, 0, 0], [1, 0, 1, 1], [1, 1, 1, 0]],
    [[0, 0, 0, 0], [1, 1, 0, 1], [0, 1, 1, 1]],
], dtype=bool)


# ---- the plate mesh --------------------------------------------------------------------------------
def plate_triangles(height_mm: np.ndarray, pitch_mm: float, base_thickness_mm: float) -> np.ndarray:
    """Triangles (T, 3, 3), float64 mm, of the closed plate solid; counter-clockwise seen from outside."""
    h = np.asarray(height_mm, dtype=np.float64)
    if h.ndim != 2 or h.size == 0:
        raise ValueError(f"height map must be a non-empty 2-D array (got shape {h.shape})")
    if not np.all(np.isfinite(h)) or h.min() < 0:
        raise ValueError("height map must be finite and >= 0")
    if not base_thickness_mm > 0:
        raise ValueError(f"base_thickness_mm must be > 0 (got {base_thickness_mm})")
    if not pitch_mm > 0:
        raise ValueError(f"pitch_mm must be > 0 (got {pitch_mm})")
    ny, nx = h.shape
    z_pad = np.zeros((ny + 2, nx + 2))
    # Heights as the STL stores them (float32), so that levels equal there are treated as equal here.
    z_pad[1:-1, 1:-1] = (base_thickness_mm + h).astype(np.float32)

    # Grid corners (ny+1, nx+1) and the heights of their four tiles.
    z_quad = np.stack([z_pad[1:, 1:], z_pad[1:, :-1], z_pad[:-1, :-1], z_pad[:-1, 1:]], axis=-1)
    ne_sw_low = np.minimum(z_quad[..., NE], z_quad[..., SW])
    nw_se_low = np.minimum(z_quad[..., NW], z_quad[..., SE])
    split = np.where(ne_sw_low > np.maximum(z_quad[..., NW], z_quad[..., SE]), 1,
                     np.where(nw_se_low > np.maximum(z_quad[..., NE], z_quad[..., SW]), 2, 0))

    # Vertex table: id = 3·corner + slot; one extra vertex (the plate centre) for the bottom fan.
    xs = (np.arange(nx + 1) - nx / 2) * pitch_mm
    ys = (np.arange(ny + 1) - ny / 2) * pitch_mm
    corner_xy = np.stack(np.broadcast_arrays(xs[None, :], ys[:, None]), axis=-1).reshape(-1, 2)
    offset = SPLIT_FRACTION * pitch_mm * _SPLIT_DIRECTION[split.ravel()]
    xy = np.stack([corner_xy, corner_xy + offset, corner_xy - offset], axis=1).reshape(-1, 2)
    xy = np.vstack([xy, [[0.0, 0.0]]])
    centre_vertex = len(xy) - 1
    # Heights of the tiles touching each vertex (NaN where a tile does not touch it).
    touch = _TOUCH[split.ravel()]                                   # (corners, 3 slots, 4 roles)
    vertex_heights = np.where(touch, z_quad.reshape(-1, 1, 4), np.nan).reshape(-1, 4)

    # Each pixel's boundary: counter-clockwise over its corners SW, SE, NE, NW, where the pixel has
    # the role NE, NW, SW, SE respectively.
    corner_id = np.arange((ny + 1) * (nx + 1)).reshape(ny + 1, nx + 1)
    pixel_corners = [(corner_id[:-1, :-1], split[:-1, :-1], NE), (corner_id[:-1, 1:], split[:-1, 1:], NW),
                     (corner_id[1:, 1:], split[1:, 1:], SW), (corner_id[1:, :-1], split[1:, :-1], SE)]
    first = np.stack([3 * c + _CHAIN[s, role, 0] for c, s, role in pixel_corners], -1).reshape(-1, 4)
    last = np.stack([3 * c + _CHAIN[s, role, 1] for c, s, role in pixel_corners], -1).reshape(-1, 4)
    z_top = z_pad[1:-1, 1:-1].ravel()
    # Neighbours across side k (corner k → k+1: S, E, N, W) and across corner k (SW, SE, NE, NW).
    z_side = np.stack([z_pad[:-2, 1:-1], z_pad[1:-1, 2:], z_pad[2:, 1:-1], z_pad[1:-1, :-2]], -1).reshape(-1, 4)
    z_diag = np.stack([z_pad[:-2, :-2], z_pad[:-2, 2:], z_pad[2:, 2:], z_pad[2:, :-2]], -1).reshape(-1, 4)

    vertex_ids, vertex_z = [], []

    def emit(ids: np.ndarray, zs: np.ndarray) -> None:
        vertex_ids.append(ids.reshape(-1, 3))
        vertex_z.append(np.broadcast_to(zs, ids.shape).reshape(-1, 3))

    # Top faces: the quad of each pixel's inner vertices, plus an ear for each connected corner.
    zz = np.repeat(z_top[:, None], 3, axis=1)
    emit(np.stack([last[:, 0], last[:, 1], last[:, 2]], -1), zz)
    emit(np.stack([last[:, 0], last[:, 2], last[:, 3]], -1), zz)
    for k in range(4):
        ear = first[:, k] != last[:, k]
        emit(np.stack([last[ear, k - 1], first[ear, k], last[ear, k]], -1), zz[ear])

    # Walls, each emitted by its taller tile along that tile's counter-clockwise edge u → v.
    u = np.concatenate([last.ravel(), first.ravel()])
    v = np.concatenate([np.roll(first, -1, axis=1).ravel(), last.ravel()])
    z_low = np.concatenate([z_side.ravel(), z_diag.ravel()])
    z_high = np.repeat(z_top, 4)
    z_high = np.concatenate([z_high, z_high])
    wall = (z_low < z_high) & (u != v)
    _emit_walls(u[wall], v[wall], z_low[wall], z_high[wall], vertex_heights, emit)

    # Bottom: a fan from the plate centre over the perimeter's corner vertices, facing −z.
    ring = np.concatenate([corner_id[0, :], corner_id[1:, -1], corner_id[-1, -2::-1], corner_id[-2:0:-1, 0]])
    ring = 3 * ring
    fan = np.stack([np.full_like(ring, centre_vertex), np.roll(ring, -1), ring], -1)
    emit(fan, np.zeros(1))

    ids = np.concatenate(vertex_ids)
    zs = np.concatenate(vertex_z)
    return np.concatenate([xy[ids], zs[..., None]], axis=-1)


def _emit_walls(u, v, z_low, z_high, vertex_heights, emit) -> None:
    """Vertical walls on edges u → v from ``z_low`` to ``z_high``, each side split at the heights of the
    other tiles touching that vertical line (no T-junctions). Triangulated as two fans: from (u, low)
    over the v side and from (v, high) over the u side; zero-height steps are dropped."""
    def side(vertex):
        others = vertex_heights[vertex]
        inside = (others > z_low[:, None]) & (others < z_high[:, None])       # NaN compares False
        mids = np.sort(np.where(inside, others, z_low[:, None]), axis=1)[:, 2:]  # ≤ 2 other tiles
        return np.concatenate([z_low[:, None], mids, z_high[:, None]], axis=1)  # ascending, 4 levels

    z_u, z_v = side(u), side(v)
    for k in range(3):
        keep = z_v[:, k] < z_v[:, k + 1]
        emit(np.stack([u[keep], v[keep], v[keep]], -1),
             np.stack([z_low[keep], z_v[keep, k], z_v[keep, k + 1]], -1))
        keep = z_u[:, k] < z_u[:, k + 1]
        emit(np.stack([v[keep], u[keep], u[keep]], -1),
             np.stack([z_high[keep], z_u[keep, k + 1], z_u[keep, k]], -1))


def plate_mesh(height_mm: np.ndarray, pitch_mm: float, base_thickness_mm: float, name: str = "plate") -> mesh.Mesh:
    """The plate as a numpy-stl mesh (mm) with unit outward normals (save with ``update_normals=False`` to
    keep them unit length; numpy-stl otherwise writes unnormalised cross products)."""
    triangles = plate_triangles(height_mm, pitch_mm, base_thickness_mm)
    plate = mesh.Mesh(np.zeros(len(triangles), dtype=mesh.Mesh.dtype), calculate_normals=False, name=name)
    plate.vectors[:] = triangles
    stored = plate.vectors.astype(np.float64)
    normals = np.cross(stored[:, 1] - stored[:, 0], stored[:, 2] - stored[:, 0])
    plate.normals[:] = normals / np.linalg.norm(normals, axis=1, keepdims=True)
    return plate


# ---- reading a print file back ---------------------------------------------------------------------
def heights_from_stl(stl_path: str | Path, neurons: int, pitch_mm: float, base_thickness_mm: float) -> np.ndarray:
    """Height map (neurons, neurons) in metres read from a plate STL (mm): the top surface's z at every
    pixel centre, minus the base. The grid is anchored at the mesh's lower x/y bounds; row i ↔ y."""
    stl_path = Path(stl_path)
    triangles = mesh.Mesh.from_file(str(stl_path)).vectors.astype(np.float64)
    lo = triangles.reshape(-1, 3).min(axis=0)
    extent = triangles.reshape(-1, 3).max(axis=0) - lo
    size_mm = neurons * pitch_mm
    for axis, name in ((0, "x"), (1, "y")):
        if abs(extent[axis] - size_mm) > 0.01 * pitch_mm:
            raise ValueError(f"{stl_path}: plate is {extent[axis]:.4f} mm wide in {name}, expected "
                             f"neurons × pitch = {size_mm:.4f} mm")
    edge1, edge2 = triangles[:, 1] - triangles[:, 0], triangles[:, 2] - triangles[:, 0]
    normal = np.cross(edge1, edge2)
    up = normal[:, 2] > 0.9 * np.linalg.norm(normal, axis=1)
    tri = triangles[up]
    # Pixel-centre index ranges under each upward triangle's bounding box, in centre-index units.
    col = (tri[..., 0] - lo[0]) / pitch_mm - 0.5
    row = (tri[..., 1] - lo[1]) / pitch_mm - 0.5
    j0 = np.clip(np.ceil(col.min(1) - 1e-6), 0, neurons).astype(np.int64)
    j1 = np.clip(np.floor(col.max(1) + 1e-6), -1, neurons - 1).astype(np.int64)
    i0 = np.clip(np.ceil(row.min(1) - 1e-6), 0, neurons).astype(np.int64)
    i1 = np.clip(np.floor(row.max(1) + 1e-6), -1, neurons - 1).astype(np.int64)
    n_cols, n_rows = np.maximum(j1 - j0 + 1, 0), np.maximum(i1 - i0 + 1, 0)
    counts = n_cols * n_rows
    t = np.repeat(np.arange(len(tri)), counts)
    k = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    jj, ii = j0[t] + k % n_cols[t], i0[t] + k // n_cols[t]
    # Barycentric coordinates of the centres (in centre-index units, so tolerances are relative).
    a = np.stack([col[t, 0], row[t, 0]], -1)
    b = np.stack([col[t, 1], row[t, 1]], -1) - a
    c = np.stack([col[t, 2], row[t, 2]], -1) - a
    q = np.stack([jj, ii], -1) - a
    det = b[:, 0] * c[:, 1] - b[:, 1] * c[:, 0]
    wb = (q[:, 0] * c[:, 1] - q[:, 1] * c[:, 0]) / det
    wc = (b[:, 0] * q[:, 1] - b[:, 1] * q[:, 0]) / det
    wa = 1 - wb - wc
    inside = (wa > -1e-9) & (wb > -1e-9) & (wc > -1e-9)
    z = wa * tri[t, 0, 2] + wb * tri[t, 1, 2] + wc * tri[t, 2, 2]
    top = np.full((neurons, neurons), -np.inf)
    np.maximum.at(top, (ii[inside], jj[inside]), z[inside])
    missing = np.argwhere(~np.isfinite(top))
    if len(missing):
        i, j = missing[0]
        raise ValueError(f"{stl_path}: no upward face above {len(missing)} pixel centre(s) (first: row {i}, "
                         f"column {j}); check neurons and pitch_mm")
    return (top - base_thickness_mm) * 1e-3


# ---- exporting a checkpoint ------------------------------------------------------------------------
def software_version() -> str:
    try:
        return importlib.metadata.version("d2nn-lab")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (d2nn-lab not installed)"


def printed_heights_m(layer, height_step_m: float) -> np.ndarray:
    """The layer's heights as printed (eval mode), float64; snapped to exact multiples of the z-step
    (the twin quantizes in float32, within 1e-7 of the same multiples)."""
    was_training = layer.training
    layer.eval()
    try:
        with torch.no_grad():
            h = layer.heights_m().detach().cpu().double().numpy()
    finally:
        layer.train(was_training)
    if height_step_m > 0:
        h = np.round(h / height_step_m) * height_step_m
    return h


def _layer_indices(layers: Iterable[int] | None, count: int) -> list[int]:
    if layers is None:
        return list(range(count))
    chosen = [int(i) for i in layers]
    bad = [i for i in chosen if not 0 <= i < count]
    if bad or not chosen:
        raise ValueError(f"layers must be indices in 0..{count - 1} (got {list(layers)})")
    if len(set(chosen)) != len(chosen):
        raise ValueError(f"layers has duplicates: {chosen}")
    return sorted(chosen)


def export_network(checkpoint_path: str | Path, out_dir: str | Path, base_thickness_mm: float = 1.0,
                   layers: Iterable[int] | None = None) -> dict:
    """Write ``layer{i}_height_m.npy`` and ``layer{i}.stl`` for the chosen layers (default: all; e.g. only
    the layers added by a fine-tuning) and ``manifest.json`` into ``out_dir``; return the manifest."""
    if not base_thickness_mm > 0:
        raise ValueError(f"base_thickness_mm must be > 0 (got {base_thickness_mm})")
    checkpoint_path = Path(checkpoint_path)
    net, payload = load_checkpoint(checkpoint_path)
    cfg = net.cfg
    indices = _layer_indices(layers, len(net.layers))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    files = {}
    for i in indices:
        height_m = printed_heights_m(net.layers[i], net.material.height_step_m)
        np.save(out_dir / f"layer{i}_height_m.npy", height_m)
        plate = plate_mesh(height_m * 1e3, cfg.grid.pitch_mm, base_thickness_mm, name=f"{cfg.name} layer{i}")
        plate.save(str(out_dir / f"layer{i}.stl"), mode=Mode.BINARY, update_normals=False)  # keep unit normals
        files[i] = {"stl": f"layer{i}.stl", "height_map": f"layer{i}_height_m.npy",
                    "stl_sha256": file_sha256(out_dir / f"layer{i}.stl"),
                    "max_height_m": float(height_m.max()), "min_height_m": float(height_m.min())}

    manifest = build_manifest(net, payload, checkpoint_path, base_thickness_mm, indices, files)
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def build_manifest(net, payload: dict, checkpoint_path: Path, base_thickness_mm: float,
                   indices: list[int], files: dict) -> dict:
    cfg, material = net.cfg, net.material
    distances = cfg.distances_m
    positions = np.cumsum(distances)
    printed = set(payload.get("printed_layers") or [])
    stack = []
    for i in range(len(net.layers)):
        entry = {"index": i, "distance_from_object_m": float(positions[i]),
                 "spacing_from_previous_m": float(distances[i]), "exported": i in files, "printed": i in printed}
        entry.update(files.get(i, {}))
        stack.append(entry)
    detector = None
    if net.detector is not None:
        det = net.detector
        detector = {
            "layout": cfg.detector.layout, "differential": det.differential, "region_size_m": det.size_m,
            "regions": [{"class": r // 2 if det.differential else r,
                         **({"sign": "+" if r % 2 == 0 else "-"} if det.differential else {}),
                         "x_m": x, "y_m": y} for r, (x, y) in enumerate(det.centres_m)],
        }
    return {
        "format": FORMAT,
        "network": cfg.name,
        "task": cfg.task,
        "software": {"d2nn-lab": software_version()},
        "checkpoint": {"path": str(checkpoint_path.resolve()), "sha256": file_sha256(checkpoint_path)},
        "freq_hz": cfg.freq_hz,
        "wavelength_m": cfg.wavelength_m,
        "neurons": cfg.grid.neurons,
        "pitch_m": cfg.pitch_m,
        "plate_size_m": cfg.grid.neurons * cfg.pitch_m,
        "base_thickness_m": base_thickness_mm * 1e-3,
        "material": {"name": cfg.material.name, "refractive_index": material.refractive_index,
                     "extinction_coefficient": material.extinction_coefficient,
                     "max_height_m": material.max_height_m, "height_step_m": material.height_step_m,
                     "phase_only": material.phase_only},
        "coordinates": {
            "stl_units": "mm",
            "xy": "plate centred on the optical axis; column j -> x = (j - (n-1)/2) * pitch, "
                  "row i -> y = (i - (n-1)/2) * pitch (the twin's grid)",
            "z": "bottom of the base at z = 0, relief towards +z; the twin treats each plate as a thin "
                 "element at distance_from_object_m",
        },
        "layers": stack,
        "layers_exported": list(indices),
        "output_distance_from_object_m": float(positions[-1]),
        "detector": detector,
    }
