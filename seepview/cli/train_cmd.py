"""Sub-commands (placeholder module, filled in by its owner)."""


def register(sub) -> None:
    return None
