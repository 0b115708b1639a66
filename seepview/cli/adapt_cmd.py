"""``seepview adapt``: fit the instant scene adaptation (issue 11) from reviewed tiles; the work is in
``seepview.core.adapt``.

Folder form: ``--images DIR --masks DIR --out ADAPTED.safetensors`` fits one adaptation per scene of the
scene rule (``--scene`` for one; names that follow no rule are one scene, adapted for every image); a
``--model`` already adapted keeps its other scenes'. Project form: ``adapt PROJECT`` registers the adapted
model as a new version whose parent is the active one.
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
    p.add_argument("--scene", default=None,
                   help="scene (group) id to adapt to (default: the project's scene with most reviewed tiles; "
                        "the folder form fits every scene with 2 or more images)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run_adapt)


def _fields(ad) -> dict:
    return {"kind": ad.kind, "scene": ad.scene, "tiles": ad.tiles, "cv": ad.cv, "fit_s": round(ad.fit_s, 3),
            "summary": ad.summary()}


def _report(args, fits: list, extra: dict) -> None:
    """Each scene's choice; in JSON the single scene's fields at the top level, and always ``adaptations``."""
    if args.json:
        top = _fields(fits[0]) if len(fits) == 1 else {}
        print(json.dumps({**top, "adaptations": [_fields(ad) for ad in fits], **extra}))
    else:
        for ad in fits:
            print(ad.summary() + (f" ({ad.fit_s:.1f} s)" if ad.fit_s else ""))
        for key, value in extra.items():
            print(f"{key}: {value}")


def _active_key(project) -> str | None:
    from seepview.core.versions import ModelRegistry

    active = ModelRegistry(project).active
    return active.key if active is not None else None


def _outcome(project, before: str | None, version, ad) -> dict:
    """What the project form did to the active model (``before``: its key until now), in words the user can
    act on."""
    key = _active_key(project)
    if version is not None:
        effect = f"new version {version.key} is active"
    elif key != before:
        effect = "the scene's adaptation no longer helps: the base model is active again"
    elif ad.kind == "none":
        effect = "no adaptation helped: nothing stored"
    else:
        effect = "the active version already labels this scene this way: nothing stored"
    return {"version": version.key if version else None, "active": key, "effect": effect}


def run_adapt(args) -> int:
    from seepview.core.errors import MaskError, ModelError, ProjectError

    if args.project is not None:
        if args.images or args.masks or args.out:
            raise ProjectError(args.project, "give either PROJECT or --images/--masks/--out, not both")
        from seepview.core.adapt import adapt_project, paused_scenes
        from seepview.core.project import Project

        project = Project.open(args.project)
        before, paused = _active_key(project), paused_scenes(project)
        version, ad = adapt_project(project, scene=args.scene)
        outcome = _outcome(project, before, version, ad)
        if ad.scene in paused:  # the app fits this scene after each review again
            outcome["resumed"] = (f"the app adapts scene {ad.scene} after reviews again (paused since the rollback "
                                  f"to {paused[ad.scene]})")
        _report(args, [ad], outcome)
        return 0
    missing = [n for n, v in (("--images", args.images), ("--masks", args.masks), ("--out", args.out)) if v is None]
    if missing:
        raise MaskError(None, f"adapt needs PROJECT, or all of --images, --masks and --out (missing {', '.join(missing)})")
    if args.out.suffix.lower() != ".safetensors" or args.out.is_dir():
        raise ModelError(args.out, "--out must be a .safetensors model file")
    from seepview.cli.options import check_output_file

    check_output_file(args.out, "--out")
    import contextlib
    from collections import Counter

    from seepview.cli.model_cmds import _pairs, _resolve_model
    from seepview.core.adapt import adapt_checkpoint, adaptations_of
    from seepview.core.adapt_units import LARGE_SIDE, is_large, pixels_for_adaptation
    from seepview.core.imageio import open_image, read_mask
    from seepview.core.model.checkpoint import save_checkpoint
    from seepview.core.project import group_of
    from seepview.core.versions import version_key

    pairs = _pairs(args.images, args.masks)
    checkpoint = _resolve_model(args.model, "sar-seep")
    groups = [group_of(image.name) for image, _ in pairs]
    counts = Counter(groups)
    units = Counter()  # out-of-fold units per scene: a large image counts as its blocks (2 or more)
    for (image, _), group in zip(pairs, groups):
        with open_image(image) as source:
            units[group] += 2 if is_large(source.shape) else 1
    if args.scene is not None:
        if args.scene not in counts:
            raise MaskError(args.images, f"no image of scene {args.scene!r} (scenes: {', '.join(sorted(counts))})")
        scenes = [args.scene]
    else:  # one adaptation per scene of the scene rule; names that follow no rule: all as one, for every image
        scenes = sorted(g for g, n in units.items() if n >= 2) if len(counts) > 1 else list(counts)
        scenes = scenes or [""]
    given = [a.scene for a in adaptations_of(checkpoint.meta.adaptation) if a.scene]
    adapted, fits = checkpoint, []
    for scene in scenes:
        with contextlib.ExitStack() as stack:
            images, truths, names = [], [], []
            for (image, mask), group in zip(pairs, groups):
                if scene and group != scene:
                    continue
                images.append(pixels_for_adaptation(stack, open_image(image)))  # a whole scene: only blocks
                truths.append(read_mask(mask, checkpoint.classes, shape=tuple(images[-1].shape[:2])))
                names.append(image.stem)
            adapted, ad = adapt_checkpoint(adapted, images, truths, scene=scene, names=names)
        fits.append(ad)
    adapted.meta.parent = version_key(checkpoint.meta)  # the model given, not an intermediate scene's
    save_checkpoint(args.out, adapted.model, adapted.meta)
    extra = {"out": str(args.out)}
    if scenes == [""] and given:  # one adaptation for every image takes the place of the model's per-scene ones
        extra["replaced"] = (f"the model's adaptations for scene(s) {', '.join(given[:5])}"
                             f"{', ...' if len(given) > 5 else ''}: these images follow no scene rule, so "
                             + ("one adaptation now covers every image" if fits[0].kind != "none"
                                else "the output holds no adaptation"))
    alone = sorted(g for g, n in units.items() if n < 2 and g not in scenes and scenes != [""])
    if alone:
        extra["left_out"] = (f"{len(alone)} scene(s) with a single image ({', '.join(alone[:5])}"
                             f"{', ...' if len(alone) > 5 else ''}): a scene needs 2 reviewed tiles, or one "
                             f"reviewed image of at least {LARGE_SIDE} x {LARGE_SIDE} px")
    _report(args, fits, extra)
    return 0
