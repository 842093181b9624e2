"""`peftds search`: its arguments (normalised, merged with the stored ones on resume), the search dir
and its search.json, and the Hydra session (composed config + the configured launcher) trials run in.

Only public Hydra APIs: the config comes from the config loader of an initialised Hydra, the launcher
from `Plugins.instantiate_launcher` (jobs' outcomes: peftds.train.launched.job_error).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from peftds.config.compose import compose, conf_dir, hydra_error_line
from peftds.errors import PeftdsError
from peftds.files import CONF_SUBDIR, SEARCH_CONFIG, SEARCH_LOCK, SEARCH_STATE, TRIALS_DIR, file_lock, write_text_atomic
from peftds.search.runner import Search
from peftds.search.settings import config_hash
from peftds.search.stages import safe_name
from peftds.search.state import override_key, read_state, record_args
from peftds.search.trial import trial_job

FILE_GROUPS = ("search", "stage", "space")  # groups whose value may be a YAML file path
GROUP_DEFAULTS = (("search", "default"), ("stage", "grouping"), ("space", "s0"))
PRIMARY_CONFIG = "config"  # conf/config.yaml, the primary config every command composes
# keys the search dir decides: given by the user they would send trials elsewhere
DIR_KEYS = ("hydra.run.dir", "hydra.sweep.dir")
# arguments that do not change what a search computes (left out of the default search dir's name)
NOT_IN_DIR_KEY = ("hydra/launcher", "hydra.launcher.", "hydra.hydra_logging", "hydra.job_logging", "search.batch_size",
                  "search.trial_threads", "search.gpu_slots", "search.report")  # fmt: skip


# ----------------------------------------------------------------------------------- arguments
def primary_groups() -> set[str]:
    """The config groups conf/config.yaml has a default for (no `+` needed to select them)."""
    cfg = yaml.safe_load((conf_dir() / f"{PRIMARY_CONFIG}.yaml").read_text()) or {}
    groups = set()
    for d in cfg.get("defaults") or []:
        if isinstance(d, dict):
            for k in d:
                groups.add(str(k).split("@")[0].replace("override ", "").strip())
    return groups


def merge_args(*lists: Sequence[str]) -> list[str]:
    """Later arguments win, keyed by the override key (so stored and new arguments combine)."""
    merged: dict[str, str] = {}
    for lst in lists:
        for a in lst:
            merged.pop(override_key(a), None)
            merged[override_key(a)] = a
    return list(merged.values())


def normalise(argv: Sequence[str], conf_root: Path) -> list[str]:
    """Group selections for search/stage/space get `+` when config.yaml has no default for them; a
    YAML path for one of them is copied into <conf_root>/<group>/ and selected by name."""
    primary = primary_groups()
    out = []
    pattern = re.compile(r"\+*({})=(.+)".format("|".join(FILE_GROUPS)))
    for a in argv:
        if a in ("-m", "--multirun"):
            continue
        m = pattern.fullmatch(a)
        if not m:
            out.append(a)
            continue
        group, value = m.group(1), m.group(2)
        if value.endswith((".yaml", ".yml")) or os.sep in value:
            path = Path(value).expanduser()
            if not path.is_file():
                raise PeftdsError(f"{group} file not found: {path}")
            try:
                yaml.safe_load(path.read_text())
            except yaml.YAMLError as e:
                raise PeftdsError(f"{group} file {path} is not valid YAML: {str(e).splitlines()[0]}") from None
            name = f"file_{safe_name(path.stem)}"
            dest = conf_root / group / f"{name}.yaml"
            dest.parent.mkdir(parents=True, exist_ok=True)
            if path.resolve() != dest.resolve():
                shutil.copy(path, dest)
            value = name
        plus = "" if group in primary else "+"
        out.append(f"{plus}{group}={value}")
    return out


def with_defaults(args: list[str]) -> list[str]:
    """Select the default search/stage/space when the arguments do not."""
    keys = {override_key(a) for a in args}
    primary = primary_groups()
    extra = [f"+{g}={d}" for g, d in GROUP_DEFAULTS if g not in keys and g not in primary]
    return extra + args


def with_searchpath(args: Sequence[str], *dirs: Path) -> list[str]:
    """One `hydra.searchpath` override: the given folders first, then the user's own entries."""
    user_paths, rest = [], []
    for a in args:
        if override_key(a) == "hydra.searchpath":
            user_paths += [p.strip() for p in a.split("=", 1)[1].strip("[]").split(",") if p.strip()]
        else:
            rest.append(a)
    paths = [f"file://{d}" for d in dirs] + user_paths
    return [*rest, f"hydra.searchpath=[{','.join(paths)}]"] if paths else rest


def args_key(argv: Sequence[str]) -> str:
    """The default search dir's name: a hash of the arguments that change what the search computes
    (and of the files they name), so running the same command again resumes the same search."""
    parts = []
    for a in sorted(argv):
        if any(override_key(a).startswith(p) for p in NOT_IN_DIR_KEY):
            continue
        parts.append(a)
        value = a.split("=", 1)[1] if "=" in a else ""
        if value.endswith((".yaml", ".yml")) and Path(value).expanduser().is_file():
            parts.append(hashlib.sha1(Path(value).expanduser().read_bytes()).hexdigest())
    return "run-" + config_hash(parts, 10)


def check_args(argv: Sequence[str]) -> None:
    """Arguments a search decides itself are refused with the key to use instead."""
    for a in argv:
        k = override_key(a)
        if k in ("design", "task"):
            raise PeftdsError(
                f"peftds search samples designs and takes its tasks from search.tasks/search.task_set; drop `{a}`"
            )
        if k in DIR_KEYS:
            raise PeftdsError(f"peftds search does not take {k}; set the search dir with search.dir=<dir>")


# ----------------------------------------------------------------------------------- the search dir
def default_search_dir(argv: Sequence[str]) -> Path:
    """search.dir of the composed config, else outputs/search/<stage>/run-<hash of the arguments>."""
    with tempfile.TemporaryDirectory(prefix="peftds-search-") as tmp:
        probe_conf = Path(tmp) / CONF_SUBDIR
        probe = with_defaults(normalise(argv, probe_conf))
        # a search path entry only when a file group was copied there (Hydra warns about missing folders)
        cfg = compose(with_searchpath(probe, probe_conf) if probe_conf.is_dir() else probe)
        configured = (cfg.get("search") or {}).get("dir")
        stage_name = safe_name((cfg.get("stage") or {}).get("name") or "stage")
    return Path(configured or f"outputs/search/{stage_name}/{args_key(argv)}").expanduser().resolve()


@dataclass
class Prepared:
    """A search command's arguments, resolved against its search dir; `keep` is what search.json stores
    once the config is accepted, `created` what preparing wrote (removed again when it is not)."""

    dir: Path
    overrides: list[str]  # every override of the search process
    forward: list[str]  # the overrides every trial gets
    keep: list[str]
    stored: list[str]  # the arguments search.json held (their values come from there)
    given: set[str]  # the keys the command itself names
    created: list[Path] = field(default_factory=list)

    def accept(self) -> None:
        """The config is accepted: remember its arguments for resume."""
        record_args(self.dir, self.keep)

    def reject(self) -> None:
        """The config is refused: remove what preparing wrote (a new search dir goes as a whole)."""
        for path in reversed(self.created):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)

    def blame(self, message: str) -> str:
        """An error message that quotes a stored value says where it comes from."""
        keys = [override_key(a) for a in self.stored if override_key(a) not in self.given]
        if any("." in k and k in message for k in keys):  # dotted keys: a group name is too common a word
            return f"{message} (a value stored in {self.dir / SEARCH_STATE})"
        return message


def files_under(root: Path) -> set[Path]:
    """Every file and folder below root (none when it does not exist)."""
    return set(root.rglob("*")) if root.is_dir() else set()


def prepare(argv: Sequence[str]) -> Prepared:
    """The search dir, the overrides of the search process and of every trial; writes only the group files
    the config needs to compose (Prepared.created), never search.json."""
    argv = list(argv)
    check_args(argv)
    dir_arg = next((a.split("=", 1)[1] for a in argv if override_key(a) == "search.dir"), None)
    stored: list[str] = []
    if dir_arg:
        sdir = Path(dir_arg).expanduser().resolve()
        stored = [a for a in read_state(sdir).get("args") or [] if override_key(a) not in DIR_KEYS]
    else:
        sdir = default_search_dir(argv)
    conf_root = sdir / CONF_SUBDIR
    new_root = next((p for p in (*reversed(sdir.parents), sdir, conf_root) if not p.exists()), None)
    before = files_under(conf_root)
    conf_root.mkdir(parents=True, exist_ok=True)
    normalised = normalise(argv, conf_root)
    created = [new_root] if new_root is not None else sorted(files_under(conf_root) - before)
    args = with_defaults(merge_args(stored, normalised))
    args = [a for a in args if override_key(a) != "search.dir"] + [f"search.dir={sdir}"]
    rest = [a for a in args if override_key(a) != "hydra.searchpath"]
    searchpath = with_searchpath([a for a in args if override_key(a) == "hydra.searchpath"], conf_root)
    hydra_args = [
        f"hydra.sweep.dir={sdir}",
        f"hydra.sweep.subdir={TRIALS_DIR}/${{hydra.job.num}}",
        *searchpath,
        "hydra.hydra_logging.root.level=WARNING",
        "hydra.job_logging.root.handlers=[file]",
    ]
    all_args = merge_args(hydra_args, slurm_gpu_args(rest, "search.gpu_slots"), rest)
    forward = [
        a
        for a in all_args
        if not override_key(a).startswith(("hydra.", "hydra/"))
        and override_key(a).split(".")[0] not in ("stage", "space")
        and override_key(a) != "search.dir"
    ]
    # the arguments to resume with (file groups already rewritten to names in the search dir)
    keep = [
        a
        for a in rest
        if override_key(a) != "search.dir"
        and not a.startswith("hydra/launcher")
        and not override_key(a).startswith("hydra.launcher")
    ]
    return Prepared(sdir, all_args, forward, keep, stored, {override_key(a) for a in argv}, created)


def slurm_gpu_args(args: Sequence[str], slots_key: str) -> list[str]:
    """GPU slots on SLURM (hydra/launcher=submitit_slurm): every job asks the scheduler for one GPU and at most
    `slots` jobs of an array run at once; the user's own hydra.launcher values come after these and win."""
    launcher = next((a.split("=", 1)[1] for a in args if override_key(a) == "hydra/launcher"), "")
    slots = next((a.split("=", 1)[1] for a in args if override_key(a) == slots_key), None)
    if launcher != "submitit_slurm" or slots in (None, "null"):
        return []
    return ["hydra.launcher.gpus_per_node=1", f"hydra.launcher.array_parallelism={slots}"]


def search_dir_lock(sdir: Path) -> contextlib.AbstractContextManager[None]:
    """One search process per search dir (a second one fails at once)."""
    return file_lock(sdir / SEARCH_LOCK, wait=False, busy=f"another peftds search is running in {sdir}")


def write_search_config(sdir: Path, cfg: Any) -> None:
    """config.yaml of the search dir: the composed config without its hydra section."""
    from omegaconf import OmegaConf

    plain = OmegaConf.to_container(cfg, resolve=False)
    plain.pop("hydra", None)
    write_text_atomic(
        sdir / SEARCH_CONFIG, "# the composed search config (without hydra)\n" + yaml.safe_dump(plain, sort_keys=False)
    )


# ----------------------------------------------------------------------------------- Hydra
class SearchCallbacks:
    """The callbacks object of the HydraContext the launcher runs jobs with: Hydra calls these hooks
    around runs and jobs; they forward to the callbacks configured under `hydra.callbacks` (none by default).
    A module-level class: launchers such as joblib pickle the context."""

    def __init__(self, config: Any = None):
        self.callbacks: list[Any] = []
        if config is not None and (config.get("hydra") or {}).get("callbacks"):
            from hydra.utils import instantiate

            self.callbacks = [instantiate(params) for params in config.hydra.callbacks.values()]

    def notify(self, hook: str, reverse: bool = False, **kwargs: Any) -> None:
        for c in reversed(self.callbacks) if reverse else self.callbacks:
            getattr(c, hook)(**kwargs)

    def on_run_start(self, config: Any, **kwargs: Any) -> None:
        self.notify("on_run_start", config=config, **kwargs)

    def on_run_end(self, config: Any, **kwargs: Any) -> None:
        self.notify("on_run_end", reverse=True, config=config, **kwargs)

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        self.notify("on_multirun_start", config=config, **kwargs)

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        self.notify("on_multirun_end", reverse=True, config=config, **kwargs)

    def on_job_start(self, config: Any, *, task_function: Any, **kwargs: Any) -> None:
        self.notify("on_job_start", config=config, task_function=task_function, **kwargs)

    def on_job_end(self, config: Any, job_return: Any, **kwargs: Any) -> None:
        self.notify("on_job_end", reverse=True, config=config, job_return=job_return, **kwargs)


@contextlib.contextmanager
def hydra_session(
    overrides: list[str], task_function: Callable[[Any], Any] = trial_job, job_name: str = "search"
) -> Iterator[tuple[Any, Any]]:
    """Compose the config with Hydra (multirun mode) and instantiate the configured launcher, whose jobs
    run `task_function` (a module-level function: launchers such as joblib pickle it)."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.plugins import Plugins
    from hydra.types import HydraContext, RunMode

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3", job_name=job_name):
            loader = GlobalHydra.instance().config_loader()
            try:
                cfg = loader.load_configuration(PRIMARY_CONFIG, overrides, run_mode=RunMode.MULTIRUN)
            except Exception as e:
                raise PeftdsError(hydra_error_line(e)) from None
            HydraConfig.instance().set_config(cfg)
            ctx = HydraContext(config_loader=loader, callbacks=SearchCallbacks(cfg))
            try:
                launcher = Plugins.instance().instantiate_launcher(
                    hydra_context=ctx, task_function=task_function, config=cfg
                )
            except Exception as e:
                raise PeftdsError(f"cannot start the Hydra launcher: {hydra_error_line(e)}") from None
            yield cfg, launcher
    finally:
        GlobalHydra.instance().clear()


# ----------------------------------------------------------------------------------- the command
def run_search(argv: Sequence[str], echo: Callable[..., Any] = print) -> int:
    """`peftds search <overrides>` in process: prepare the search dir, start Hydra, check every setting,
    then record the arguments and run every stage. A refused command leaves the dir as it found it."""
    prep = prepare(argv)
    sdir, accepted = prep.dir, False
    try:
        with search_dir_lock(sdir), hydra_session(prep.overrides) as (cfg, launcher):
            search = Search.from_config(cfg, sdir, prep.forward, launcher, echo=echo)
            plan = search.plan_stages()  # every check before the dir records anything
            prep.accept()
            accepted = True
            write_search_config(sdir, cfg)
            return search.run(plan)
    except PeftdsError as e:
        if accepted:
            raise
        prep.reject()
        raise PeftdsError(prep.blame(str(e))) from None
    except KeyboardInterrupt:
        echo(f"\n[search] interrupted; resume with: peftds search search.dir={sdir}")
        raise


def cmd_search(argv: list[str]) -> int:
    """The `peftds search` command (the CLI turns SIGTERM into Ctrl-C: the running trial saves a checkpoint
    and records `preempted`, finished trials are kept)."""
    try:
        return run_search(argv, echo=lambda *a: print(*a, flush=True))
    except KeyboardInterrupt:
        print("peftds search: interrupted (finished trials are kept)", file=sys.stderr, flush=True)
        return 130
