"""``seepview demo [DIR]`` and ``seepview import SOURCE DEST``: make projects from nothing or from data."""

from __future__ import annotations

import json
import time
from pathlib import Path

MAX_DEMO_IMAGES = 1000
MAX_DEMO_SIZE = 8192  # an 8192² tile is already a whole-scene-sized demo; 200 000² would need 149 GiB


def register(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="create the synthetic SAR demo project",
        description="Create a demo project of synthetic SAR-like tiles (speckle, wind streaks, dark slicks, "
        "no-data wedges). The true masks go to DIR/truth/; labels/ starts empty for you to review. "
        "If DIR already holds a project it is left as it is.",
    )
    p.add_argument("dir", nargs="?", help="project folder (default: the per-user data folder's demo/)")
    p.add_argument("--images", type=int, default=6, help="number of tiles (default 6)")
    p.add_argument("--size", type=int, default=512, help="tile size in pixels (default 512)")
    p.add_argument("--seed", type=int, default=0, help="random seed; same seed, same project (default 0)")
    p.set_defaults(func=run_demo)

    p = sub.add_parser(
        "import",
        help="create a project from labelled data (mask folders, YOLOv8-seg, COCO, labelme)",
        description="Create a project in DEST from SOURCE: a folder with images/ and masks/ (or --masks), "
        "a Roboflow/YOLOv8-seg export, a COCO JSON, labelme JSON files, or a folder of images. Images stay "
        "where they are; annotations become masks in DEST/labels/.",
    )
    p.add_argument("source", help="data folder or COCO/labelme JSON file")
    p.add_argument("dest", help="new (or empty) project folder")
    p.add_argument("--classes", help="class table: a preset (sar-seep, corrosion) or a JSON file")
    p.add_argument(
        "--masks", help="mask folder, when masks are not in SOURCE/masks (SOURCE is then the images)"
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run_import)


def run_demo(args) -> int:
    from seepview.core.demo import make_demo_project
    from seepview.core.paths import user_data_dir
    from seepview.core.project import PROJECT_FILE

    dest = Path(args.dir) if args.dir else user_data_dir() / "demo"
    if (dest / PROJECT_FILE).is_file():
        print(f"demo project already exists: {dest}")
        return 0
    from seepview.cli.options import Bound, check_options

    check_options(args, {"--seed": Bound(0, 2**32 - 1, whole=True)})
    if not (1 <= args.images <= MAX_DEMO_IMAGES and 32 <= args.size <= MAX_DEMO_SIZE):
        from seepview.core.errors import ProjectError

        raise ProjectError(
            dest, f"--images must be 1 to {MAX_DEMO_IMAGES} and --size 32 to {MAX_DEMO_SIZE} pixels "
            f"(got {args.images} and {args.size})",
        )
    start = time.perf_counter()
    project = make_demo_project(dest, n_images=args.images, size=args.size, seed=args.seed)
    print(
        f"created demo project with {len(project)} images in {time.perf_counter() - start:.1f} s: {project.root}"
    )
    return 0


def run_import(args) -> int:
    from seepview.cli.model_cmds import Progress
    from seepview.core.importers import import_any

    start = time.perf_counter()
    bar = Progress("import", quiet=args.json)
    try:
        project = import_any(args.source, args.dest, classes=args.classes, masks=args.masks, progress=bar)
    finally:
        bar.close()
    summary = {
        "project": str(project.root),
        "format": project.settings.get("import", {}).get("format"),
        "images": len(project),
        "labelled": len(project.labelled_entries()),
        "groups": len(project.groups()),
        "classes": project.classes.names,
        "seconds": round(time.perf_counter() - start, 2),
    }
    if args.json:
        print(json.dumps(summary))
    else:
        print(
            f"imported {summary['images']} images ({summary['labelled']} labelled, {summary['groups']} groups) "
            f"as {summary['format']} in {summary['seconds']} s into {summary['project']}\n"
            f"classes: {', '.join(summary['classes'])}"
        )
    return 0
