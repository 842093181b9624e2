"""Config composition: the Hydra tree in conf/, plus design/space YAML files given by path."""

from __future__ import annotations

import difflib
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from peftds.errors import PeftdsError

if TYPE_CHECKING:
    from omegaconf import DictConfig

REPO_DIR = Path(__file__).resolve().parents[2]
CONF_DIR = Path(os.environ.get("PEFTDS_CONF") or REPO_DIR / "conf")
# The data folder the Makefile uses (../shared/data beside the checkout) when PEFTDS_DATA is not set.
DEFAULT_DATA_DIR = REPO_DIR.parent / "shared" / "data"
# Groups whose value may also be a YAML file path (e.g. the design a search wrote).
FILE_GROUPS = ("design", "space")
PEFT_ADAPTER_CONFIG = "adapter_config.json"  # `design=<folder>` takes a peft adapter folder holding one


def plain(obj: Any) -> Any:
    """OmegaConf containers -> plain Python (dicts/lists, interpolations resolved); anything else as is."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(obj, (DictConfig, ListConfig)):
        return OmegaConf.to_container(obj, resolve=True)
    return obj


def default_data_dir() -> Path | None:
    """The data folder a command uses when neither PEFTDS_DATA nor data.dir is set: ../shared/data
    beside the checkout when it exists (what `make` exports), else none."""
    return DEFAULT_DATA_DIR if DEFAULT_DATA_DIR.is_dir() else None


def use_default_data_dir() -> None:
    """Export PEFTDS_DATA=<default data folder> when it is unset, as the Makefile does (trials launched in
    other processes inherit it)."""
    if not os.environ.get("PEFTDS_DATA") and (found := default_data_dir()) is not None:
        os.environ["PEFTDS_DATA"] = str(found)


def did_you_mean(word: str, known: Sequence[str]) -> str:
    """` (did you mean X?)` for the closest known name, or ''."""
    close = difflib.get_close_matches(word, list(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


def reject_unknown_keys(cfg: Any, known: Any, where: str) -> None:
    """One clear error naming every key of a config section that its schema does not know."""
    unknown = sorted(set(cfg) - set(known))
    if unknown:
        raise PeftdsError(f"{where}: unknown key(s) {unknown} (known: {sorted(known)})")


def conf_dir() -> Path:
    if not (CONF_DIR / "config.yaml").exists():
        raise PeftdsError(f"config tree not found at {CONF_DIR} (set PEFTDS_CONF to the repo's conf/ folder)")
    return CONF_DIR


def expand_file_overrides(overrides: Sequence[str]) -> list[str]:
    """`design=path/to/x.yaml` -> `design=x` plus a search-path entry for a temporary group folder.

    Hydra only picks group options from its search path, so a file given by path is copied into
    <tmp>/<group>/<stem>.yaml and that folder is added with `hydra.searchpath`.
    """
    out, extra_dirs = [], []
    for ov in overrides:
        m = re.fullmatch(r"(\+?)({})=(.+)".format("|".join(FILE_GROUPS)), ov)
        if m and m.group(2) == "design" and names_peft_config(m.group(3)):
            root = Path(tempfile.mkdtemp(prefix="peftds-conf-"))
            (root / "design").mkdir()
            stem = peft_design_file(Path(m.group(3)).expanduser(), root / "design")
            shutil.copy(conf_dir() / "design" / "base_hparams.yaml", root / "design" / "base_hparams.yaml")
            extra_dirs.append(root)
            out.append(f"{m.group(1)}design={stem}")
        elif m and (m.group(3).endswith((".yaml", ".yml")) or os.sep in m.group(3)):
            path = Path(m.group(3)).expanduser()
            if not path.is_file():
                raise PeftdsError(f"{m.group(2)} file not found: {path}")
            root = Path(tempfile.mkdtemp(prefix="peftds-conf-"))
            (root / m.group(2)).mkdir()
            stem = re.sub(r"[^A-Za-z0-9_]", "_", path.stem)
            shutil.copy(path, root / m.group(2) / f"{stem}.yaml")
            if m.group(2) == "design":  # the copied file may list `base_hparams` in its defaults
                shutil.copy(conf_dir() / "design" / "base_hparams.yaml", root / "design" / "base_hparams.yaml")
            extra_dirs.append(root)
            out.append(f"{m.group(1)}{m.group(2)}={stem}")
        else:
            out.append(ov)
    if extra_dirs:
        paths = ",".join(f"file://{d}" for d in extra_dirs)
        out.append(f"hydra.searchpath=[{paths}]")
    return out


def names_peft_config(value: str) -> bool:
    """Whether a `design=` value names a peft config: a .json file, or a folder holding adapter_config.json."""
    path = Path(value).expanduser()
    return value.endswith(".json") or (path.is_dir() and (path / PEFT_ADAPTER_CONFIG).is_file())


def peft_design_file(path: Path, folder: Path) -> str:
    """Write the design that stands for a peft config (its path, turned into a design once the model is known,
    see peftds.design.from_peft) into `folder`; returns its option name."""
    if not path.exists():
        raise PeftdsError(f"peft config not found: {path}")
    source = path / PEFT_ADAPTER_CONFIG if path.is_dir() else path
    label = path.name if path.is_dir() else (path.parent.name if path.stem == "adapter_config" else path.stem)
    stem = re.sub(r"[^A-Za-z0-9_]", "_", label) or "peft"
    design = {"defaults": ["base_hparams", "_self_"], "name": stem, "peft_config": str(source.resolve())}
    (folder / f"{stem}.yaml").write_text(yaml.safe_dump(design, sort_keys=False))
    return stem


def _override_value(overrides: Sequence[str], key: str) -> str | None:
    for ov in overrides:
        k, sep, value = ov.lstrip("+~").partition("=")
        if sep and k == key:
            return value
    return None


def design_file(value: str) -> Path:
    """The YAML file a `design=<value>` override selects: a path, or conf/design/<value>.yaml."""
    if value.endswith((".yaml", ".yml")) or os.sep in value:
        return Path(value).expanduser()
    return conf_dir() / "design" / f"{value}.yaml"


def with_design_model(overrides: Sequence[str]) -> list[str]:
    """`model=<m>` added when the selected design names the model it was made for (`model: <m>` in
    its YAML) and the overrides select no model themselves: an explicit `model=` always wins."""
    overrides = list(overrides)
    design = _override_value(overrides, "design")
    if design is None or _override_value(overrides, "model") is not None:
        return overrides
    path = design_file(design)
    try:
        made_for = (yaml.safe_load(path.read_text()) or {}).get("model")
    except (OSError, yaml.YAMLError, AttributeError):
        return overrides  # composing reports a missing or broken design file with its own message
    return [f"model={made_for}", *overrides] if isinstance(made_for, str) and made_for else overrides


# Groups that config.yaml does not compose for every command: each command that reads one adds it.
OPTIONAL_GROUPS = {"search": "default", "stage": "grouping", "space": "s0", "bench": "default", "compare": "default"}


def group_options(group: str) -> list[str]:
    """The options of a config group: the YAML files of conf/<group>/ (shared fragments left out)."""
    return sorted(p.stem for p in (conf_dir() / group).glob("*.yaml") if p.stem != "base_hparams")


def with_groups(overrides: Sequence[str], groups: Sequence[str]) -> list[str]:
    """The overrides plus `+<group>=<option>` for each optional group the command reads: the user's
    choice (`bench=gpu`) when given, else the group's default."""
    out, chosen = [], {}
    for ov in overrides:
        key, sep, value = ov.lstrip("+").partition("=")
        if sep and key in OPTIONAL_GROUPS and key in groups:
            chosen[key] = value
        else:
            out.append(ov)
    extra = [f"+{g}={chosen.get(g, OPTIONAL_GROUPS[g])}" for g in groups if g in OPTIONAL_GROUPS]
    return extra + out


def compose_for(groups: Sequence[str], overrides: Sequence[str]) -> DictConfig:
    """The config a command with these groups composes (its optional groups added, a design's model)."""
    return compose(with_groups(with_design_model(overrides), groups))


def compose(overrides: Sequence[str] = (), config_name: str = "config") -> DictConfig:
    """Compose the config tree without starting a Hydra run (no run dir, no logging set-up)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    overrides = expand_file_overrides(overrides)
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
            return hydra_compose(config_name=config_name, overrides=list(overrides))
    except PeftdsError:
        raise
    except Exception as e:  # Hydra/OmegaConf errors: unknown key, unknown group option, bad syntax
        raise PeftdsError(hydra_error_line(e, overrides)) from None
    finally:
        GlobalHydra.instance().clear()


def flat_keys(node: Any, prefix: str = "") -> list[str]:
    """Every dotted key of a plain mapping, inner mappings' keys included."""
    out = []
    for key, child in node.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        out += [name, *(flat_keys(child, name) if isinstance(child, dict) else [])]
    return out


def known_keys(overrides: Sequence[str], leave_out: str = "") -> list[str]:
    """Every dotted key of the config that the group choices among `overrides` compose, `leave_out`'s
    override left out (empty when even that config cannot compose)."""
    from omegaconf import OmegaConf

    keys = [ov.lstrip("+~").split("=", 1)[0] for ov in overrides]
    choices = [ov for ov, key in zip(overrides, keys) if "." not in key and key != leave_out]
    try:
        return flat_keys(OmegaConf.to_container(compose(choices), resolve=False))
    except PeftdsError:
        return []


def closest_key(key: str, known: Sequence[str]) -> str | None:
    """The known key `key` most likely means: its first unknown part replaced by the closest sibling."""
    parts, known_set = key.split("."), set(known)
    for i, part in enumerate(parts):
        if ".".join(parts[: i + 1]) in known_set:
            continue
        parent = ".".join(parts[:i])
        siblings = [k.rsplit(".", 1)[-1] for k in known if k.count(".") == i and k.startswith(parent)]
        close = difflib.get_close_matches(part, siblings, n=1, cutoff=0.6)
        if not close:
            return None
        guess = ".".join([*parts[:i], close[0], *parts[i + 1 :]])
        return guess if guess in known_set else None
    return None


def unknown_option_line(group: str, option: str, offered: Sequence[str]) -> str:
    """`unknown <group> option 'x' (did you mean y?; known: ...)` for a group choice Hydra cannot find."""
    local = conf_dir() / group
    known = group_options(group) if local.is_dir() else list(offered)
    hint = did_you_mean(option, known)[2:-1] + "; " if did_you_mean(option, known) else ""
    files = " or a YAML file path" if group in FILE_GROUPS else ""
    return f"unknown {group} option '{option}' ({hint}known: {', '.join(known)}{files})"


def hydra_error_line(e: BaseException, overrides: Sequence[str] = ()) -> str:
    """One line for a Hydra/OmegaConf composition error: an unknown key or group option gets a "did you
    mean"; anything else is Hydra's message without its config search path."""
    text = " ".join(line.strip() for line in str(e).strip().splitlines() if line.strip()) or type(e).__name__
    if m := re.search(r"Could not (?:override|delete from config\.) '([^']+)'", text):
        key = m.group(1)
        guess = closest_key(key, known_keys(overrides, leave_out=key))
        return f"unknown key {key}" + (f" (did you mean {guess}?)" if guess else "")
    if m := re.search(
        r"Could not find '([^']+)/([^'/]+)' Available options in '[^']+': (.*?) Config search path", text
    ):
        return unknown_option_line(m.group(1), m.group(2), m.group(3).split())
    if m := re.search(r"Error parsing override '([^']+)' missing EQUAL", text):
        return f"'{m.group(1)}' is not an override: settings are key=value (e.g. model=tiny_t5)"
    text = text.split(" Config search path:")[0]
    return re.sub(r" See https://hydra\.cc/\S+ for details", "", text)
