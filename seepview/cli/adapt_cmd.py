"""``seepview adapt``: fit the instant scene adaptation (issue 11) from reviewed tiles; the work is in
``seepview.core.adapt``.

Folder form: ``--images DIR --masks DIR --out ADAPTED.safetensors`` treats the images as one scene (or
the most frequent scene of the scene rule, ``--scene`` to pick). Project form: ``adapt PROJECT``
registers the adapted model as a new version whose parent is the active one.
"""

from __future__ import annotations

import json
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser(
        "adapt",
        help="adapt a model to one scene from its reviewed tiles in seconds (pixel head, typer prior)",
        description="Fit the instant per-scene adaptation from reviewed tiles: candidates (none, the scene's "
        "class prior for the typer, the scene's main class, a pixel head from 10 tiles) are chosen out-of-fold "
        "on the tiles. Folder form writes --out; project form registers a model version.",
    )
    p.add_argument("project", nargs="?", type=Path, help="project folder (project form)")
    p.add_argument("--model", default=None, help="model file or preset (folder form; default sar-seep)")
    p.add_argument("--images", type=Path, help="folder of reviewed images (folder form)")
    p.add_argument("--masks", type=Path, help="folder of their masks, same stems (folder form)")
    p.add_argument("--out", type=Path, help="adapted model file to write (.safetensors, folder form)")
    p.add_argument("--scene", default=None, help="scene (group) id to adapt to (default: the one with most tiles)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run_adapt)


def _report(args, ad, extra: dict) -> None:
    if args.json:
        print(json.dumps({"kind": ad.kind, "scene": ad.scene, "tiles": ad.tiles, "cv": ad.cv,
                          "fit_s": round(ad.fit_s, 3), "summary": ad.summary(), **extra}))
    else:
        print(ad.summary() + (f" ({ad.fit_s:.1f} s)" if ad.fit_s else ""))
        for key, value in extra.items():
            print(f"{key}: {value}")


def run_adapt(args) -> int:
    from seepview.core.errors import MaskError, ModelError, ProjectError

    if args.project is not None:
        if args.images or args.masks or args.out:
            raise ProjectError(args.project, "give either PROJECT or --images/--masks/--out, not both")
        from seepview.core.adapt import adapt_project
        from seepview.core.project import Project

        project = Project.open(args.project)
        version, ad = adapt_project(project, scene=args.scene)
        _report(args, ad, {"version": version.key if version else None,
                           "active": version.key if version else "unchanged (no adaptation helped)"})
        return 0
    missing = [n for n, v in (("--images", args.images), ("--masks", args.masks), ("--out", args.out)) if v is None]
    if missing:
        raise MaskError(None, f"adapt needs PROJECT, or all of --images, --masks and --out (missing {', '.join(missing)})")
    if args.out.suffix.lower() != ".safetensors" or args.out.is_dir():
        raise ModelError(args.out, "--out must be a .safetensors model file")
    from seepview.cli.options import check_output_file

    check_output_file(args.out, "--out")
    from seepview.cli.model_cmds import _pairs, _resolve_model
    from seepview.core.adapt import adapt_checkpoint
    from seepview.core.imageio import open_image, read_mask
    from seepview.core.model.checkpoint import save_checkpoint
    from seepview.core.project import group_of

    pairs = _pairs(args.images, args.masks)
    checkpoint = _resolve_model(args.model, "sar-seep")
    groups = [group_of(image.name) for image, _ in pairs]
    scene = args.scene or max(sorted(set(groups)), key=groups.count)
    if scene not in groups:
        raise MaskError(args.images, f"no image of scene {scene!r} (scenes: {', '.join(sorted(set(groups)))})")
    images, truths, names = [], [], []
    for (image, mask), group in zip(pairs, groups):
        if group != scene and args.scene is not None:
            continue
        with open_image(image) as source:
            array = source.read_all()
        images.append(array)
        truths.append(read_mask(mask, checkpoint.classes, shape=array.shape[:2]))
        names.append(image.stem)
    adapted, ad = adapt_checkpoint(checkpoint, images, truths, scene=scene if args.scene or len(set(groups)) == 1 else "", names=names)
    save_checkpoint(args.out, adapted.model, adapted.meta)
    _report(args, ad, {"out": str(args.out)})
    return 0
