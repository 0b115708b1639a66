"""``seepview queue PROJECT|IMAGE_DIR``: which images need review most. The work is ``seepview.core.queue``.

Cached predictions of the model are used; only images without one are predicted (progress bar on
stderr, silent with ``--json``). ``--json`` prints exactly one JSON list of ``{"id", "score"}``, most in
need of review first. Reviewed images and images that cannot be read are not queued; the latter are
named on stderr.
"""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser(
        "queue",
        help="list images in the order they most need review (uncertainty-guided)",
        description="Rank a project's unreviewed images by how much a review would change them, from the "
        "model's uncertainty. A folder of images gets a project beside it (<folder>.seepview), as when the "
        "app opens it, so predictions are cached for the next run and for the app.",
    )
    p.add_argument("path", type=Path, metavar="PROJECT|IMAGE_DIR", help="a seepview project or a folder of images")
    p.add_argument(
        "--model", default=None,
        help="model file (.safetensors) or a shipped preset name (default: the project's active model, else "
        "the shipped model for its class table)",
    )
    p.add_argument("--top", type=int, default=None, metavar="N", help="print only the first N images")
    p.add_argument("--json", action="store_true", help='print one JSON list of {"id": str, "score": float}')
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: best available)")
    p.set_defaults(func=run_queue)


def _checkpoint(project, spec: str | None):
    from seepview.core.errors import ModelError
    from seepview.core.session import load_active_model

    if spec is None:
        checkpoint, problem = load_active_model(project)
        if checkpoint is None:
            raise ModelError(project.root, problem or "the project has no model; pass --model")
        return checkpoint
    from seepview.cli.model_cmds import _resolve_model

    checkpoint = _resolve_model(spec, spec)
    if checkpoint.num_classes != len(project.classes):
        raise ModelError(
            spec, f"the model predicts {checkpoint.num_classes} classes but the project has {len(project.classes)}"
        )
    return checkpoint


def run_queue(args) -> int:
    from seepview.cli.model_cmds import Progress
    from seepview.core.errors import ImageReadError, ModelError
    from seepview.core.model.infer import Predictor
    from seepview.core.paths import user_data_dir
    from seepview.core.queue import ReviewQueue, predict_missing, project_scores
    from seepview.core.session import project_for_path
    from seepview.core.versions import weights_key

    if args.top is not None and args.top < 1:
        raise ModelError(None, f"--top must be at least 1, got {args.top}")
    project = project_for_path(args.path, user_data_dir())
    checkpoint = _checkpoint(project, args.model)
    key = weights_key(checkpoint)
    pending = [e.id for e in project.entries if e.status != "reviewed"]
    bar = Progress("predict", stream=io.StringIO() if args.json else sys.stderr)  # --json: errors only
    try:
        predictor = Predictor(checkpoint, device=args.device)
    except ValueError as exc:
        raise ModelError(None, str(exc)) from None
    try:
        broken = predict_missing(project, predictor, key, pending, progress=bar)
    finally:
        bar.close()
    scores, missing = project_scores(project, key, pending)
    broken.update(missing)
    if broken and not scores:  # nothing could be scored: that is an error, not an empty queue
        first, reason = sorted(broken.items())[0]
        others = f" (and {len(broken) - 1} more)" if len(broken) > 1 else ""
        raise ImageReadError(project.image_path(first), f"{reason}; no image can be queued{others}")
    for image_id, reason in sorted(broken.items()):
        print(f"seepview: {project.image_path(image_id)}: {reason} (not queued)", file=sys.stderr)
    review = ReviewQueue()
    review.update(scores, broken)
    order = [i for i in review.order(project.entries) if i in scores]
    if args.top is not None:
        order = order[: args.top]
    if args.json:
        print(json.dumps([{"id": i, "score": round(scores[i], 6)} for i in order]))
        return 0
    width = max((len(i) for i in order), default=2)
    print(f"{'rank':>4}  {'score':>7}  {'image':<{width}}  status")
    for rank, image_id in enumerate(order, 1):
        print(f"{rank:>4}  {scores[image_id]:7.4f}  {image_id:<{width}}  {project.entry(image_id).status}")
    return 0

