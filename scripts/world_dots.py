"""Make the console's world map: a dot grid of land cells (taishi/api/console/world.js).

Run once, by hand; the output is committed. Source: the GLOBE 1-km land mask as
shipped in the ``global-land-mask`` PyPI wheel (MIT; GLOBE data: NOAA, public
domain), read from its ``globe_combined_mask_compressed.npz``::

    pip download --no-deps global-land-mask && unzip global_land_mask-*.whl -d glm
    python scripts/world_dots.py glm/global_land_mask/globe_combined_mask_compressed.npz

A cell of STEP degrees is land when at least 25 % of its samples are.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

STEP = 2.0
LAT_TOP, LAT_BOTTOM = 84.0, -58.0  # no Antarctica: nothing there attacks anyone


def main(npz: str) -> None:
    d = np.load(npz)
    mask, lat, lon = d["mask"], d["lat"], d["lon"]  # mask: True = ocean
    rows = []
    for top in np.arange(LAT_TOP, LAT_BOTTOM, -STEP):
        li = np.where((lat <= top) & (lat > top - STEP))[0]
        band = mask[li[:: max(1, len(li) // 12)]]
        bits = []
        for left in np.arange(-180.0, 180.0, STEP):
            ci = np.where((lon >= left) & (lon < left + STEP))[0]
            cell = band[:, ci[:: max(1, len(ci) // 12)]]
            bits.append("1" if 1.0 - cell.mean() >= 0.25 else "0")  # the mask is True on water
        rows.append("".join(bits))
    out = Path(__file__).resolve().parent.parent / "taishi" / "api" / "console" / "world.js"
    body = ",\n".join(f'  "{r}"' for r in rows)
    out.write_text(
        "// Land cells for the console's map, made by scripts/world_dots.py from the GLOBE land mask\n"
        "// (NOAA, public domain). Rows from latitude " f"{LAT_TOP:g} down by {STEP:g} degrees; columns from\n"
        f"// longitude -180 east by {STEP:g} degrees; 1 = land.\n"
        '"use strict";\n'
        f"window.TAISHI_WORLD = {{ step: {STEP:g}, top: {LAT_TOP:g}, left: -180, rows: [\n{body}\n] }};\n",
        encoding="utf-8")
    print(f"{out}: {len(rows)} rows x {len(rows[0])} columns, {sum(r.count('1') for r in rows)} land cells")


if __name__ == "__main__":
    main(sys.argv[1])
