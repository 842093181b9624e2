# Design-space search targets. Included by the Makefile (`include search.mk`); uses its
# BIN, PEFTDS_DATA and offline settings.
#
#   make search-demo            one stage (grouping) on the real MiniLM-L6 + local SST-2, CPU, offline
#   make search-racing-demo     the same stage as a race (search.racing=true): options clearly behind stop early
#   make stage-truth-cpu        the grouping stage at full fidelity (search=truth), its report and `peftds replay`
#   make stage-truth-paired-cpu the same stage with paired designs (search.paired, the default)
#   make stage-truth-tunable-cpu a stage whose options differ (stage=tunable5), paired, same size
#   make stage-live-tunable-cpu the same designs decided live, multi-fidelity (epoch-1 looks, half continued)
#   make search-tiny            stage=all on a tiny random T5 with tiny data (smoke test of the machinery)
#   make paper-search-t5base    the paper's search on T5-base (GPU + hub access), see the cost notes
#   make paper-train-s4-t5base  the S4 design (spindle_t5base) on the 8 GLUE tasks, final regime
#   make paper-baselines-t5base full FT, Adapter, Prefix, LoRA (0.5%) and BitFit (0.1%) on GLUE
#
# Every search target resumes: run it again after an interruption and it continues where it stopped
# (finished trials are never re-run). Launch trials in parallel / on a cluster with SEARCH_LAUNCHER,
# e.g. SEARCH_LAUNCHER='hydra/launcher=joblib hydra.launcher.n_jobs=8 search.gpu_slots=8' (8 GPUs of
# one machine) or SEARCH_LAUNCHER='hydra/launcher=submitit_slurm hydra.launcher.gpus_per_node=1
# hydra.launcher.partition=<p> hydra.launcher.timeout_min=240' (one SLURM job per trial).

SEARCH_OUT ?= outputs/search
SEARCH_LAUNCHER ?=
SEARCH_ARGS ?=
PAPER_OUT ?= outputs/paper
PAPER_TASKS ?= cola sst2 mrpc qqp stsb mnli qnli rte
PAPER_EPOCHS ?= 10
PAPER_ARGS ?=

.PHONY: search-demo search-demo-clean search-racing-demo stage-truth-cpu stage-truth-paired-cpu stage-truth-tunable-cpu stage-live-tunable-cpu search-tiny paper-search-t5base paper-train-s4-t5base paper-baselines-t5base

# search=demo: stage=grouping (5 options) x N=5 designs x SST-2, each trained 1 epoch on 2000
# training sentences and scored on 200 held-out ones: 25 trials. Measured on 2 CPU cores: a trial takes
# 10-13 s on an idle machine (~5.5 min for the stage), 9m45s with other jobs sharing the cores
# (torch's 2 threads stall when a core is taken: on a busy machine add SEARCH_ARGS=search.trial_threads=1).
# Result (reproducible): spindle 78.8 [77.8, 79.6] > bottleneck 78.2 > decreasing 77.7 > uniform 77.0 >
# increasing 76.3 (intervals overlap). The report lands in $(SEARCH_OUT)/demo/report.md.
# (measured with the unpaired sampler and every design trained: search.paired=false search.sequential=false)
search-demo: install ## one search stage end to end on CPU (MiniLM-L6, local SST-2), offline
	$(BIN)/peftds search search=demo stage=grouping search.paired=false search.sequential=false search.dir=$(SEARCH_OUT)/demo $(SEARCH_LAUNCHER) $(SEARCH_ARGS)
	$(BIN)/peftds report $(SEARCH_OUT)/demo

search-demo-clean:
	rm -rf $(SEARCH_OUT)/demo

# search-demo as a race (README "Stage decisions"): the same designs and trials (ids), in rounds; an option whose
# interval falls below the leader's stops getting designs (at N=5, with options a few points apart, rarely
# one: it shows the machinery at the cost of search-demo). Its own dir; race.json + the report's race section.
search-racing-demo: install
	$(BIN)/peftds search search=demo search.racing=true search.paired=false stage=grouping search.dir=$(SEARCH_OUT)/demo_racing $(SEARCH_LAUNCHER) $(SEARCH_ARGS)
	$(BIN)/peftds report $(SEARCH_OUT)/demo_racing

# Ground truth for cheap stage decisions: the grouping stage at full fidelity (conf/search/truth.yaml:
# 5 options x 12 designs x SST-2, 3 epochs, the held-out score kept after every epoch), two trials at a
# time on CPU, then `peftds replay`: how often racing, a smaller N or fewer epochs pick the same winner,
# at what share of the trial-epochs (replay.md / replay.json / replay.png in the stage dir).
stage-truth-cpu: install
	$(BIN)/peftds search search=truth stage=grouping search.paired=false search.dir=$(SEARCH_OUT)/truth hydra/launcher=joblib hydra.launcher.n_jobs=2 search.trial_threads=1 $(SEARCH_ARGS)
	$(BIN)/peftds report $(SEARCH_OUT)/truth
	$(BIN)/peftds replay $(SEARCH_OUT)/truth/grouping

# The two paired ground truths (README "Stage decisions"): the grouping stage again, and tunable5 (one group,
# two groups or all four tuned: options that should differ), each 5 options x 12 paired designs x 3 epochs.
TRUTH_CPU = search=truth hydra/launcher=joblib hydra.launcher.n_jobs=2 search.trial_threads=1
stage-truth-paired-cpu: install
	$(BIN)/peftds search $(TRUTH_CPU) stage=grouping search.paired=true search.dir=$(SEARCH_OUT)/truth_paired $(SEARCH_ARGS)
	$(BIN)/peftds report $(SEARCH_OUT)/truth_paired
	$(BIN)/peftds replay $(SEARCH_OUT)/truth_paired/grouping

stage-truth-tunable-cpu: install
	$(BIN)/peftds search $(TRUTH_CPU) stage=tunable5 search.paired=true search.dir=$(SEARCH_OUT)/truth_tunable $(SEARCH_ARGS)
	$(BIN)/peftds report $(SEARCH_OUT)/truth_tunable
	$(BIN)/peftds replay $(SEARCH_OUT)/truth_tunable/tunable5

# The tunable5 ground truth's designs (same trial ids) decided live by the default decision with multi-fidelity
# looks: every design of a look trained to epoch 1, the first half continued to epoch 3 from its checkpoint.
# tests/search/test_live_truth.py checks its committed files (tests/search/fixtures/live_tunable) against the
# ground truth: the same scores, and the decision a replay of its design order predicts.
stage-live-tunable-cpu: install
	$(BIN)/peftds search $(TRUTH_CPU) stage=tunable5 search.sequential=true search.cheap_epochs=1 search.dir=$(SEARCH_OUT)/live_tunable $(SEARCH_ARGS)

# Every stage chained on the 24-layer tiny T5 (83 trials of a few seconds each on CPU).
search-tiny: install
	$(BIN)/peftds search stage=all model=tiny_t5 search=tiny search.dir=$(SEARCH_OUT)/tiny_t5 $(SEARCH_LAUNCHER) $(SEARCH_ARGS)
	$(BIN)/peftds report $(SEARCH_OUT)/tiny_t5

# ---------------------------------------------------------------------------------------------
# Paper reproduction (Chen et al. 2023) on T5-base: needs a GPU machine with hub access (weights
# google-t5/t5-base, GLUE from nyu-mll/glue), so the offline switches are turned off here.
#
# Cost (estimate from SPEC §8: a PEFT step of T5-base, batch 128, bf16, on one H100 takes ~0.2 s;
# GLUE's 8 training sets hold ~0.95M examples): one search design = 8 tasks x 3 epochs ~ 22k steps
# ~ 1.2 H100-hours (less with length-grouped batches: GLUE inputs are mostly far below 128 tokens).
# Per stage at N=100: grouping 500 designs (~600 GPU-h), allocation 300 (~370), tunable groups
# 1500 (~1.8k), strategy 4 x 1500 (~7.4k): ~10k H100-hours for stage=all. Scale with
# SEARCH_ARGS='search.n=20' (~2k GPU-h) or a cheaper task set (search.tasks=[sst2,mrpc,rte,stsb,cola]).
paper-search-t5base: export HF_HUB_OFFLINE := 0
paper-search-t5base: export HF_DATASETS_OFFLINE := 0
paper-search-t5base: export TRANSFORMERS_OFFLINE := 0
paper-search-t5base: install
	$(BIN)/peftds search stage=all search=default model=t5_base data.dir=null search.dir=$(SEARCH_OUT)/paper_t5base $(SEARCH_LAUNCHER) $(SEARCH_ARGS)
	$(BIN)/peftds report $(SEARCH_OUT)/paper_t5base

# The S4-model (conf/design/spindle_t5base.yaml) trained in the final regime (paper protocol,
# $(PAPER_EPOCHS) epochs) on each GLUE task and scored on the dev sets: 8 runs, ~0.95M x 10 / 128
# ~ 74k steps ~ 4 H100-hours in all. Use DESIGN=<file> for the design a search wrote
# ($(SEARCH_OUT)/paper_t5base/best_design.yaml).
DESIGN ?= spindle_t5base
paper-train-s4-t5base: export HF_HUB_OFFLINE := 0
paper-train-s4-t5base: export HF_DATASETS_OFFLINE := 0
paper-train-s4-t5base: export TRANSFORMERS_OFFLINE := 0
paper-train-s4-t5base: install
	set -e; for t in $(PAPER_TASKS); do \
	  $(BIN)/peftds train model=t5_base design=$(DESIGN) task=$$t train=paper train.epochs=$(PAPER_EPOCHS) \
	    data.dir=null data.max_train_samples=null hydra.run.dir=$(PAPER_OUT)/s4_t5base/$$t $(PAPER_ARGS); \
	done

# Baselines at the paper's budgets: full fine-tuning, Adapter, Prefix, LoRA (0.5%), BitFit (0.1%):
# 5 designs x 8 tasks = 40 runs, ~4 H100-hours each design (full FT about the same per step): ~20 GPU-h.
paper-baselines-t5base: export HF_HUB_OFFLINE := 0
paper-baselines-t5base: export HF_DATASETS_OFFLINE := 0
paper-baselines-t5base: export TRANSFORMERS_OFFLINE := 0
paper-baselines-t5base: install
	set -e; for d in full adapter prefix lora bitfit; do \
	  budget=p0_5; [ $$d = bitfit ] && budget=p0_1; \
	  for t in $(PAPER_TASKS); do \
	    $(BIN)/peftds train model=t5_base design=$$d budget=$$budget task=$$t train=paper train.epochs=$(PAPER_EPOCHS) \
	      data.dir=null data.max_train_samples=null hydra.run.dir=$(PAPER_OUT)/baselines_t5base/$$d/$$t $(PAPER_ARGS); \
	  done; \
	done
