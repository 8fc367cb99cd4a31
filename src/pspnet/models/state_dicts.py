"""Comparing a state dict with a module's: the missing / unexpected / wrong-shape report every loader uses."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

MAX_LISTED = 8
"""Keys listed per category in an error before `... (N in all)`."""


@dataclass
class StateDictDiff:
    """Keys of a module's state dict absent from a file, file keys the module does not use, and shape clashes."""

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    wrong_shape: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.missing or self.unexpected or self.wrong_shape)

    def describe(self, headline: str, limit: int | None = None) -> str:
        """`headline`, then one line per non-empty category (at most `limit` keys each when given)."""
        lines = [headline]
        for title, keys in (
            ("missing", self.missing),
            ("unexpected", self.unexpected),
            ("wrong shape", self.wrong_shape),
        ):
            if keys:
                shown = keys if limit is None else keys[:limit]
                more = f", ... ({len(keys)} in all)" if len(shown) < len(keys) else ""
                lines.append(f"  {title} ({len(keys)}): " + ", ".join(shown) + more)
        return "\n".join(lines)


def compare_state_dicts(
    expected: Mapping[str, torch.Tensor],
    found: Mapping[str, torch.Tensor],
    names: Mapping[str, str] | None = None,
    optional: tuple[str, ...] = (),
) -> StateDictDiff:
    """Compare a module's state dict (`expected`) with a file's tensors (`found`).

    `names` maps each expected key to the file's name for it (default: the same name); keys are
    reported under the file's names, in the module's order (unexpected ones in the file's order).
    Expected keys ending with one of `optional` may be missing.
    """
    names = names if names is not None else {key: key for key in expected}
    diff = StateDictDiff()
    for key, tensor in expected.items():
        name = names[key]
        if name not in found:
            if not key.endswith(optional):
                diff.missing.append(name)
        elif tuple(found[name].shape) != tuple(tensor.shape):
            diff.wrong_shape.append(f"{name} (file {tuple(found[name].shape)}, model {tuple(tensor.shape)})")
    used = set(names.values())
    diff.unexpected = [name for name in found if name not in used]
    return diff
