"""The tiny-family equivalence table: every family x every pruning method x every placement (blocks
split over three devices, streamed from disk, streamed from host memory), each pruned at 0.5 from the
same calibration as on one device: are the removals, their order and the FFN masks the same, and how
far apart are the pruned models' logits? (``tests/test_placement.py`` asserts the same comparison.)

    .venv/bin/python benchmarks/placement_equivalence.py          # a table, then one JSON line
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.models import FAMILIES, tiny_model
from tests.support.placements import PLACEMENTS, SPECS, compare
from twossp.errors import UnsupportedArchitecture


def main() -> None:
    rows = []
    for family in FAMILIES:
        model = tiny_model(family, num_layers=6)
        for method in sorted(SPECS):
            for how in PLACEMENTS:
                with tempfile.TemporaryDirectory() as folder:
                    try:
                        result = compare(model, method, how, Path(folder))
                    except UnsupportedArchitecture:
                        rows.append({"family": family, "method": method, "placement": how, "supported": False})
                        continue
                rows.append({"family": family, "method": method, "placement": how, "supported": True,
                             "same_choices": result.same_choices, "max_logit_difference": result.max_logit_difference,
                             "max_resident_blocks": result.max_resident})
    print(f"{'family':<8} {'method':<12} {'placement':<17} {'same choices':<13} {'max |logit diff|':<17} resident")
    for row in rows:
        if not row["supported"]:
            print(f"{row['family']:<8} {row['method']:<12} {row['placement']:<17} (family not supported by the method)")
            continue
        print(f"{row['family']:<8} {row['method']:<12} {row['placement']:<17} {str(row['same_choices']):<13} "
              f"{row['max_logit_difference']:<17.3g} {row['max_resident_blocks'] if row['max_resident_blocks'] is not None else '-'}")
    supported = [r for r in rows if r["supported"]]
    print(f"{sum(r['same_choices'] for r in supported)} of {len(supported)} placed prunings chose the same; "
          f"largest logit difference {max(r['max_logit_difference'] for r in supported):.3g}")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
