"""Experiment files: YAML in (a file may extend another with ``base:``), ``--set KEY=VALUE`` overrides,
one validation, YAML out."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from ..secrets import without_credentials
from .base import ConfigError
from .dotted import deepcopy, merge, set_in
from .experiment import ExperimentConfig

BASE_KEY = "base"  # top-level key of an experiment file: the file it extends, relative to itself


class DuplicateKeyError(yaml.YAMLError):
    """A mapping that names the same key twice (YAML would keep the last one, silently)."""

    def __init__(self, key: Any, line: int, first: int) -> None:
        super().__init__(f"duplicate key {key!r} at line {line} (first at line {first})")
        self.key, self.line, self.first = key, line, first


class _UniqueKeys(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping (``<<:`` merges stay)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                if key in seen:
                    raise DuplicateKeyError(key, line, seen[key])
                seen[key] = line
            except TypeError:  # an unhashable key: the base constructor says so
                break
        return super().construct_mapping(node, deep=deep)


def parse_yaml(text: str) -> Any:
    """``yaml.safe_load``, except that a key given twice in a mapping is a ``DuplicateKeyError``."""
    return yaml.load(text, Loader=_UniqueKeys)  # a SafeLoader: plain data only


def parse_override(item: str) -> tuple[list[str], Any]:
    """``"moco.temperature=0.2"`` -> ``(["moco", "temperature"], 0.2)``; the value is parsed as YAML."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. moco.temperature=0.2")
    key, raw = item.split("=", 1)
    parts = [p for p in key.strip().split(".")]
    if not key.strip() or any(not p for p in parts):
        raise ConfigError(f"--set {item!r}: empty key segment in {key!r}")
    try:
        value = parse_yaml(raw) if raw.strip() else None
    except yaml.YAMLError as e:
        raise ConfigError(without_credentials(f"--set {item!r}: value is not valid YAML: {e}")) from e
    return parts, value


def apply_overrides(raw: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Apply ``--set`` items to a raw config dict (a copy); validation happens afterwards."""
    out = deepcopy(raw)
    for item in overrides:
        parts, value = parse_override(item)
        set_in(out, parts, value, f"--set {item!r}")
    return out


def format_validation_error(err: ValidationError, source: str) -> str:
    lines = [f"invalid configuration in {without_credentials(source)}:"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; see the experiment files in experiments/)"
        lines.append(f"  {loc}: {msg}")
    return "\n".join(lines)


def config_from_dict(raw: dict[str, Any], source: str = "<dict>") -> ExperimentConfig:
    """Validate a raw config dict; a ``ConfigError`` names every bad key of ``source``."""
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, source)) from None


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"experiment file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        line = e.object[: e.start].count(b"\n") + 1
        raise ConfigError(
            f"{path}: not UTF-8 text (byte 0x{e.object[e.start]:02x} on line {line}); save the file as UTF-8"
        ) from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the experiment file: {e.strerror or e}") from None
    try:
        raw = parse_yaml(text)
    except DuplicateKeyError as e:
        raise ConfigError(
            f"{path} line {e.line}: key {e.key!r} is given twice in one mapping (first at line {e.first}); "
            "YAML would keep only the last one: merge the two"
        ) from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections (name, data, model, ...)")
    return raw


def read_experiment(path: str | Path) -> dict[str, Any]:
    """An experiment file as a raw dict, its ``base:`` chain merged in.

    ``base: other.yaml`` (relative to the file) extends another file: mappings merge key by key, every
    other value of the file replaces the base's (a list or ``null`` too). A base may have a base of its
    own; a cycle or a missing base is a ``ConfigError`` naming the file.
    """
    chain: list[Path] = []
    layers: list[dict[str, Any]] = []
    path = Path(path)
    while True:
        raw = read_yaml(path)
        chain.append(path)
        base = raw.pop(BASE_KEY, None)
        layers.append(raw)
        if base is None:
            break
        if not isinstance(base, str) or not base.strip():
            raise ConfigError(f"{path}: base: must name one experiment file, e.g. base: digits.yaml")
        parent = path.parent / base.strip()
        if not parent.is_file():
            raise ConfigError(
                f"{path}: base {base!r} not found (looked for {parent}; a base is relative to the file "
                "that names it)"
            )
        if any(parent.resolve() == seen.resolve() for seen in chain):
            cycle = " -> ".join(str(p) for p in [*chain, parent])
            raise ConfigError(f"{path}: base {base!r} makes a cycle: {cycle}")
        path = parent
    out: dict[str, Any] = {}
    for layer in reversed(layers):  # the first base first; each file that extends it wins over it
        out = merge(out, layer)
    return out


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> ExperimentConfig:
    """Read a YAML experiment file (and its ``base:`` chain), apply ``--set`` overrides, validate."""
    raw = apply_overrides(read_experiment(path), overrides)
    src = str(path) + (" with --set " + " ".join(overrides) if overrides else "")
    return config_from_dict(raw, src)


def dump_yaml(cfg: ExperimentConfig) -> str:
    """The config as YAML that :func:`load_config` reads back to an equal config (no ``base:``)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def json_schema() -> dict[str, Any]:
    """The JSON schema of an experiment file, for editors: :class:`ExperimentConfig`'s, plus ``base``."""
    schema = ExperimentConfig.model_json_schema()
    schema["properties"] = {
        BASE_KEY: {
            "type": "string",
            "title": "Base",
            "description": "the experiment file this one extends, relative to this file; "
            "mappings merge key by key, other values replace the base's",
        },
        **schema["properties"],
    }
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}
