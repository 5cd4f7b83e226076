"""The image folder's defaults measured on drawings: a folder of Omniglot characters saved as
users bring scans (grey content in RGB JPEGs of mixed sizes), trained with ProtoNet at one small
budget under each setting, 5-way 1-shot meta-test accuracy with its 95% interval.

The folder: `--classes` characters of Omniglot's background set (seeded choice), 20 drawings each,
every drawing resized to its own width and height in [80, 120] px and saved as an RGB JPEG.
There is no few-shot set of photos here, so the photo defaults are not measured.
    python experiments/image_folder_defaults.py [--only old,auto] [--classes 50] [--seed 1]
"""

from __future__ import annotations

import argparse
import io
import os
import random
import tempfile
import time
import zipfile
from pathlib import Path

from PIL import Image

from metalearn.paths import project_root
from metalearn.run.compose import compose_config
from metalearn.run.training import train

ARCHIVE = "images_background.zip"
BUDGET = ["algorithm=protonet", "dataset=image_folder", "num_epochs=1", "episode.num_tasks=100",
          "episode.val_episodes=20", "episode.test_episodes=300"]
#: the settings compared, by name: the overrides added to BUDGET and the folder
SETTINGS = {
    # the image folder's former defaults
    "old": ["dataset.image_size=84", "dataset.channels=3", "+dataset/augment=natural"],
    # what auto chooses for these drawings (every image grey, median shorter side 90 px) ...
    "grey_28_none": ["dataset.image_size=28", "dataset.channels=1", "dataset.augment=null"],
    # ... with the natural-image augmentation
    "grey_28_natural": ["dataset.image_size=28", "dataset.channels=1",
                        "+dataset/augment=natural"],
    # the former size alone
    "grey_84_none": ["dataset.image_size=84", "dataset.channels=1", "dataset.augment=null"],
    # the defaults themselves (auto): the same as grey_28_none
    "auto": [],
}


def archive_dir() -> Path:
    return Path(os.environ.get("METALEARN_OMNIGLOT_ARCHIVES",
                               Path(project_root()).parent / "shared" / "datasets" / "omniglot"))


def write_drawings(root: Path, classes: int, seed: int = 0) -> Path:
    """`classes` characters, 20 drawings each, as RGB JPEGs of sizes 80-120 px per side."""
    rng = random.Random(seed)
    with zipfile.ZipFile(archive_dir() / ARCHIVE) as archive:
        drawings: dict[str, list[str]] = {}
        for name in archive.namelist():
            if name.endswith(".png"):
                drawings.setdefault(str(Path(name).parent), []).append(name)
        for character in rng.sample(sorted(drawings), classes):
            folder = root / character.replace("/", "_")
            folder.mkdir(parents=True, exist_ok=True)
            for name in sorted(drawings[character]):
                image = Image.open(io.BytesIO(archive.read(name))).convert("L")
                size = (rng.randint(80, 120), rng.randint(80, 120))
                image.resize(size, Image.Resampling.BILINEAR).convert("RGB").save(
                    folder / f"{Path(name).stem}.jpg", quality=90)
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="comma-separated names of SETTINGS to run")
    parser.add_argument("--classes", type=int, default=50)
    parser.add_argument("--seed", type=int, default=1, help="the training seed")
    parser.add_argument("--out", default=f"{project_root()}/outputs/image_folder_defaults.md")
    args = parser.parse_args()
    names = args.only.split(",") if args.only else list(SETTINGS)
    lines = ["| setting | command (after `python train.py`) | 5-way 1-shot test accuracy "
             "(95% CI) | wall time |", "|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as work:
        root = write_drawings(Path(work) / "drawings", args.classes)
        for name in names:
            overrides = [*BUDGET, f"seed={args.seed}", f"dataset.root={root}",
                         f"paths.data_dir={work}/data", *SETTINGS[name]]
            started = time.time()
            record = train(compose_config(overrides, f"{work}/runs/{name}"))
            elapsed = time.time() - started
            shown = " ".join(o for o in overrides if not o.startswith("paths."))
            lines.append(f"| {name} | `{shown}` | {100 * record['test_acc']:.2f}% +- "
                         f"{100 * record['test_acc_ci95']:.2f}% | {elapsed:.0f} s |")
            print(lines[-1], flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
