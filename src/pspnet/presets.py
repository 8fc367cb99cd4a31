"""The presets: ready-to-run configs shipped inside the package (`pspnet/configs/*.yaml`; the repository's
`configs/` is a link to that folder, so there is one copy). Wherever a config path is accepted, a preset's
name works too: `pspnet train synthetic`, `pspnet config pspnet_r101_ade20k > my.yaml`."""

from __future__ import annotations

import difflib
from importlib import resources
from pathlib import Path

from .errors import ConfigError


def presets_folder() -> Path:
    return Path(str(resources.files("pspnet").joinpath("configs")))


def list_presets() -> list[tuple[str, str]]:
    """(name, one-line description) of every preset: the first line of the file's leading comment, up to its
    first `: ` when that leaves a phrase of some length."""
    found = []
    for path in sorted(presets_folder().glob("*.yaml")):
        first = path.read_text(encoding="utf-8").partition("\n")[0]
        line = first.lstrip("#").strip() if first.startswith("#") else ""
        cut = line.find(": ")
        found.append((path.stem, (line[:cut] if cut >= 20 else line).rstrip(":.")))
    return found


def preset_path(name: str) -> Path:
    """The file of preset `name`; ConfigError listing the presets (and the closest name) otherwise."""
    path = presets_folder() / f"{name}.yaml"
    if path.is_file():
        return path
    names = [preset for preset, _ in list_presets()]
    close = difflib.get_close_matches(name, names, n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]}?" if close else ""
    raise ConfigError(
        f"config file not found: {name}, and no preset has that name{hint} (presets: {', '.join(names)}; "
        "see `pspnet config --presets`)"
    )


def resolve_config_path(text: str | Path) -> Path:
    """A config argument as a file: the path if it is a file, else the preset of that name."""
    path = Path(text)
    if path.is_file():
        return path
    if path.suffix in (".yaml", ".yml") or len(path.parts) > 1:
        hint = ""
        if path.stem in {name for name, _ in list_presets()}:
            hint = f" (the preset of that name is `{path.stem}`)"
        raise ConfigError(f"config file not found: {path}{hint}")
    return preset_path(str(text))
