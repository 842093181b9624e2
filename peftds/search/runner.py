"""The stage-wise design-space search (SPEC §5), run by `peftds search` (peftds.search.launch).

    peftds search stage=grouping search=demo            # one stage
    peftds search stage=allocation space=<dir>/grouping/space_next.yaml
    peftds search stage=all model=tiny_t5 search=tiny   # every stage, chained
    peftds search ... hydra/launcher=joblib             # parallel trials on one machine
    peftds search ... hydra/launcher=submitit_slurm     # a SLURM cluster (submitit_local: local processes)
    peftds search search.dir=<existing dir>             # resume (same arguments as stored there)

Without search.dir the search dir is outputs/search/<stage>/run-<hash of the arguments>, so running
the same command again resumes the same search (launcher choice is not part of the hash).

A stage samples N designs per option from (space ∧ option) (peftds.design.space), trains each on every task
of the task set in the low-compute regime, scores it on the held-out slice of the training data,
picks the option with the highest mean and writes the refined space (space_next.yaml). Trials are
ordinary `peftds train` jobs (peftds.search.trial) launched through Hydra's launcher plugins: the
search process composes the config with Hydra, instantiates the configured launcher
(hydra/launcher=basic | joblib | submitit_local | submitit_slurm) and hands it batches of per-trial
override lists (peftds.search.launch); every trial writes result.json in its own dir, and the search
appends one row per trial to the stage's trials.csv (peftds.search.store).

Search dir layout::

    search.json                  arguments (for resume) and the stages run
    config.yaml                  the composed search config
    conf/design/<stage>/*.yaml   sampled designs (Hydra config group `design`, found via hydra.searchpath)
    trials/<trial id>/           one Hydra job dir per trial: result.json, trial.out, .hydra/
    <stage>/stage.json           options, tasks, input space, sampled designs per option
    <stage>/trials.csv           one row per (option, design index, task)
    <stage>/summary.json         per-option statistics and the winner
    <stage>/space_next.yaml      input space + the winner (feed it to the next stage)
    <stage>/best_design.yaml     best design of the winning option (peftds train design=<file>)
    <stage>/report.md, *.png     the stage report (peftds report <dir> rewrites them)
    best_design.yaml             after the last stage (and space_final.yaml)
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from peftds.config.compose import conf_dir
from peftds.data.loading import choose_source, data_config
from peftds.data.tasks import load_task
from peftds.design.space import Space
from peftds.errors import PeftdsError
from peftds.files import BEST_DESIGN, SPACE_FINAL, STAGE_FILE, TRIALS_DIR, read_json, write_text_atomic
from peftds.search.designs import ModelContext, StageDesigns, changed_settings
from peftds.search.settings import SearchSetup
from peftds.search.stage_run import StageResult, StageRun
from peftds.search.stages import StageSpec, stage_chain
from peftds.search.state import record_stages_run


class Search:
    """A search over the stages of the config, in one search dir, trials run by `launcher`."""

    def __init__(
        self,
        config: SearchSetup,
        search_dir: Path,
        forward: Sequence[str] = (),
        launcher: Any = None,
        echo: Callable[..., Any] = print,
    ):
        self.config = config
        self.dir = Path(search_dir)
        self.forward = list(forward)  # task overrides every trial composes with
        self.launcher = launcher
        self.echo = echo
        self.job_idx = 0
        self.stages_run: list[str] = []
        self._model: ModelContext | None = None

    @classmethod
    def from_config(cls, cfg: Any, search_dir: Path, forward: Sequence[str] = (), launcher: Any = None,
                    echo: Callable[..., Any] = print) -> Search:  # fmt: skip
        """The one place a search reads the composed (OmegaConf) config."""
        return cls(SearchSetup.from_config(cfg), search_dir, forward, launcher, echo)

    @property
    def model(self) -> ModelContext:
        """The backbone on the meta device (built once, on first use)."""
        if self._model is None:
            self._model = ModelContext.build(self.config)
        return self._model

    @property
    def designs(self) -> StageDesigns:
        return StageDesigns(self.config, self.dir, self.model, self.echo)

    def trial_dir(self, trial_id: str) -> Path:
        return self.dir / TRIALS_DIR / trial_id

    def batch_size(self, pending: int) -> int:
        """Trials handed to the launcher at once: search.batch_size, else by launcher kind."""
        bs = self.config.settings.batch_size
        if bs:
            return max(1, int(bs))
        target = self.config.launcher_target.lower() if self.launcher is not None else ""
        if "joblib" in target:
            n_jobs = self.config.launcher_n_jobs or -1
            return max(1, os.cpu_count() or 1) if n_jobs < 0 else n_jobs
        if "submitit" in target:
            return max(1, pending)
        return 1

    # ------------------------------------------------------------------ validation (before training)
    def check_data(self) -> None:
        """Every task's data can be found (local files, or the hub when online) before any training."""
        dcfg = data_config(self.config.data)
        for name in self.config.tasks:
            choose_source(load_task(name, conf_dir()), dcfg)

    def input_space(self) -> Space:
        space = Space.from_config(self.config.space, where="space")
        space.check(self.model.layers)
        return space

    def plan_stages(self) -> tuple[list[StageSpec], bool, Space]:
        """The stages, whether they are a chain, and the input space, all checked before any training."""
        specs, chain = stage_chain(self.config.stage)
        space = self.input_space()
        for spec in specs:
            spec.validate_values(space.groups)
        if not chain:
            spec = specs[0]
            if spec.dimension == "strategies" and spec.group != "each":
                self.check_strategy_group(spec, space, strict=True)
            elif spec.dimension is not None and spec.dimension != "strategies" and space.constrained(spec.dimension):
                raise PeftdsError(
                    f"stage '{spec.name}': the space already constrains {spec.dimension} "
                    f"({getattr(space, spec.dimension)}); start from a space without it"
                )
        self.check_resumable()
        self.check_data()  # after the config checks: a bad option is named even where data is missing
        return specs, chain, space

    def check_resumable(self) -> None:
        """Every stage the search dir already holds was started with this command's seed, task set and
        regime: a resumed search never trains trials whose rows it cannot record (else one line)."""
        for meta_path in sorted(self.dir.glob(f"*/{STAGE_FILE}")):
            meta = read_json(meta_path)
            changed = changed_settings(meta, self.config, meta_path.parent) if meta else []
            if changed:
                raise PeftdsError(
                    f"{meta_path.parent} was started with different {', '.join(changed)}; resume it with the "
                    "same settings or use a new search.dir"
                )

    def check_strategy_group(self, spec: StageSpec, space: Space, strict: bool) -> bool:
        """A strategies stage's group can still be decided (raise when strict, else skip with a note)."""
        g = int(spec.group)
        if g > space.groups:
            raise PeftdsError(f"stage '{spec.name}': group {g} is outside the space's {space.groups} groups")
        if space.tuned is not None and g not in space.tuned:
            msg = f"stage '{spec.name}': group {g} is not tuned in this space (tuned: {list(space.tuned)})"
            if strict:
                raise PeftdsError(msg)
            self.echo(f"[search] skip {spec.name}: {msg.split(': ', 1)[1]}")
            return False
        if space.constrained("strategies", g):
            msg = (
                f"stage '{spec.name}': group {g} strategies are already fixed to "
                f"{list(space.strategies[g - 1])} in this space"
            )
            if strict:
                raise PeftdsError(msg)
            self.echo(f"[search] skip {spec.name}: already fixed in the input space")
            return False
        return True

    def runnable(self, spec: StageSpec, space: Space) -> bool:
        """The stage's dimension is still open in `space` (else it is skipped with a note)."""
        if spec.dimension == "strategies":
            return self.check_strategy_group(spec, space, strict=False)
        if spec.dimension is not None and space.constrained(spec.dimension):
            self.echo(f"[search] skip stage {spec.name}: the space already fixes {spec.dimension}")
            return False
        return True

    # ------------------------------------------------------------------ run
    def run(self, plan: tuple[list[StageSpec], bool, Space] | None = None) -> int:
        """Run every stage in order (`plan`: plan_stages() when already checked); 0 when done, 1 when a
        stage ended without a winner."""
        specs, _, space = plan or self.plan_stages()
        s, m = self.config.settings, self.model
        self.echo(
            f"[search] {self.dir}  model L={m.layers} budget={m.budget:,} params  tasks={self.config.tasks}  "
            f"N={s.n}  epochs={s.epochs}  regime={self.config.regime_hash}"
        )
        self.echo(f"[search] input space: {space.describe()}")
        last: StageResult | None = None
        for spec in specs:
            subs = [spec]
            if spec.dimension == "strategies" and spec.group == "each":
                subs = [spec.for_group(g) for g in range(1, space.groups + 1)]
            for sub in subs:
                if not self.runnable(sub, space):
                    continue
                last = self.run_stage(sub, space)
                if last.next_space is None:
                    self.echo(f"[search] stopped after stage {sub.name}: {last.summary['message']}")
                    return 1
                space = last.next_space
        if last is None:
            self.echo("[search] nothing to do: every stage's dimension is already fixed by the input space")
            return 0
        if last.best_design:
            best = self.dir / BEST_DESIGN
            shutil.copy(last.best_design, best)
            write_text_atomic(self.dir / SPACE_FINAL, yaml.safe_dump(space.to_config(), sort_keys=False))
            self.echo(f"[search] final design: {best}  (peftds train design={best})")
        return 0

    def run_stage(self, spec: StageSpec, space: Space) -> StageResult:
        if spec.name not in self.stages_run:
            self.stages_run.append(spec.name)
            record_stages_run(self.dir, self.stages_run)
        return StageRun(self, spec, space).run()
