"""Regenerate ``evalcam/data/imagenet_wnids.txt``: the 1000 ILSVRC2012 WordNet ids in class-index order.

The order is derived, not assumed: wsolevaluation's ``class_labels.txt`` gives every validation image an
integer class and Kaggle's ``LOC_val_solution.csv`` gives the same image its synset, so each integer is
paired with the synsets seen for it over the 50,000 images. The script fails unless every integer 0..999
meets exactly one synset and the resulting list is sorted (torchvision's index order is the sorted wnids).

    python scripts/make_imagenet_wnids.py \
        --class-labels ../shared/data/imagenet_meta/wsolevaluation_ILSVRC_test/class_labels.txt \
        --solution ../shared/data/imagenet_meta/LOC_val_solution.csv
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

DEFAULT_META = Path(__file__).resolve().parents[2] / "shared" / "data" / "imagenet_meta"
OUTPUT = Path(__file__).resolve().parents[1] / "evalcam" / "data" / "imagenet_wnids.txt"


def image_key(path_or_id: str) -> str:
    """``val/ILSVRC2012_val_00000001.JPEG`` or ``ILSVRC2012_val_00000001`` -> ``ILSVRC2012_val_00000001``."""
    return Path(path_or_id.strip()).stem


def read_class_labels(path: Path) -> dict[str, int]:
    """wsolevaluation ``class_labels.txt`` (``val/NAME.JPEG,INDEX``) -> {image id: index}."""
    labels: dict[str, int] = {}
    for line in path.read_text().splitlines():
        if line.strip():
            name, index = line.rsplit(",", 1)
            labels[image_key(name)] = int(index)
    return labels


def read_solution_synsets(path: Path) -> dict[str, set[str]]:
    """Kaggle ``LOC_val_solution.csv`` -> {image id: synsets named in PredictionString}."""
    synsets: dict[str, set[str]] = {}
    with path.open(newline="") as handle:
        for row in csv.DictReader(handle):
            synsets[image_key(row["ImageId"])] = {
                t for t in row["PredictionString"].split() if t.startswith("n")
            }
    return synsets


def derive_wnids(labels: dict[str, int], synsets: dict[str, set[str]]) -> list[str]:
    """Pair integers with synsets image by image; raise ValueError on any inconsistency."""
    seen: dict[int, set[str]] = {}
    common = labels.keys() & synsets.keys()
    if not common:
        raise ValueError("the two files share no image id")
    for key in common:
        seen.setdefault(labels[key], set()).update(synsets[key])
    ambiguous = {i: s for i, s in seen.items() if len(s) != 1}
    if ambiguous:
        raise ValueError(f"class indices with several synsets: {dict(list(ambiguous.items())[:5])}")
    if sorted(seen) != list(range(1000)):
        missing = sorted(set(range(1000)) - seen.keys())
        raise ValueError(f"expected class indices 0..999, missing {missing[:10]}")
    wnids = [next(iter(seen[i])) for i in range(1000)]
    if len(set(wnids)) != 1000:
        raise ValueError("two class indices map to the same synset")
    if wnids != sorted(wnids):
        raise ValueError("class index order is not the sorted wnid order")
    return wnids


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--class-labels", type=Path, default=DEFAULT_META / "wsolevaluation_ILSVRC_test" / "class_labels.txt"
    )
    parser.add_argument("--solution", type=Path, default=DEFAULT_META / "LOC_val_solution.csv")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args(argv)
    wnids = derive_wnids(read_class_labels(args.class_labels), read_solution_synsets(args.solution))
    args.output.write_text("\n".join(wnids) + "\n")
    print(f"wrote {len(wnids)} wnids to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
