# Comparison tables (`peftds compare`: designs x tasks x seeds, mean ± std, significance). Included by the
# Makefile (`include compare.mk`); uses its BIN, PEFTDS_DATA and offline settings.
#
#   make table-cpu                        MiniLM-L6 + local GLUE (SST-2, MRPC) on CPU, offline
#   make paper-table-glue-t5base          the paper's GLUE table on T5-base (GPU + hub access)
#   make paper-table-glue-t5-3b           ... on T5-3b
#   make paper-table-glue-roberta-base    ... on RoBERTa-base
#   make paper-table-glue-roberta-large   ... on RoBERTa-large
#   make paper-table-gen-bart             XSum ROUGE-1/2/L + WMT16 en-ro BLEU on BART-base and BART-large
#
# Every target prints its number of runs and estimated GPU-hours first, resumes when run again
# (finished runs are never re-run), and with DRY=1 only lists the runs. COMPARE_LAUNCHER runs them in
# parallel or on a cluster, e.g. COMPARE_LAUNCHER='hydra/launcher=joblib hydra.launcher.n_jobs=8
# compare.gpu_slots=8'. Tables: $(COMPARE_OUT)/<name>/table.md (.csv, .tex); runs: runs.csv, runs/<id>/.

COMPARE_OUT ?= outputs/compare
COMPARE_LAUNCHER ?=
COMPARE_ARGS ?=
COMPARE_SEEDS ?= [1,2,3]
DRY ?=
# the S4 design of the GLUE tables: conf/design/<name> or a YAML file a search wrote (DESIGN=<file>)
DESIGN ?= spindle_t5base
DESIGN_ANY ?= spindle
# the second mixed design of table-cpu: the best design `make search-demo` writes (skipped when absent)
DESIGN2 ?= $(wildcard $(or $(SEARCH_OUT),outputs/search)/demo/best_design.yaml)
BASELINES := full,adapter,prefix,lora,bitfit@p0_1,pa,mam,unipelt
COMPARE = $(BIN)/peftds compare $(if $(DRY),compare.dry=true) compare.seeds=$(COMPARE_SEEDS) $(COMPARE_LAUNCHER)

.PHONY: table-cpu paper-table-glue-t5base paper-table-glue-t5-3b paper-table-glue-roberta-base \
	paper-table-glue-roberta-large paper-table-gen-bart

# 9 designs (+ DESIGN2) x SST-2, MRPC x 3 seeds, 1000 training examples and 1 epoch each, full dev sets:
# 54 (60) runs, two single-threaded workers (2 cores; torch's 2-thread runs stall when a core is busy).
# Target <= 45 min on 2 cores; the measured time and table are in the README.
TABLE_CPU_LAUNCHER ?= hydra/launcher=joblib hydra.launcher.n_jobs=2 compare.threads=1
table-cpu: install
	@$(if $(DESIGN2),echo "table-cpu: adding DESIGN2=$(DESIGN2)",echo "table-cpu: no DESIGN2 (run make search-demo first to add its best design); skipped")
	$(COMPARE) compare=cpu compare.dir=$(COMPARE_OUT)/cpu $(TABLE_CPU_LAUNCHER) \
	  compare.designs=[full,adapter,prefix,lora,bitfit@p0_5,pa,mam,unipelt,spindle$(if $(DESIGN2),$(comma)$(abspath $(DESIGN2)))] \
	  $(COMPARE_ARGS)

comma := ,

# ---------------------------------------------------------------------------------------------
# The paper's tables: GPU machines with hub access (weights and GLUE/XSum/WMT16 from the hub), so the
# offline switches are turned off and data.dir=null. Regime: train=paper (lr 5e-5, batch 128 base /
# 64 large), 10 epochs, whole training sets, scored on dev; 9 designs x 8 tasks x 3 seeds = 216 runs
# per GLUE table (the estimate printed first: T5-base ~115 H100-hours of training for all of them).
PAPER_ENV = HF_HUB_OFFLINE=0 HF_DATASETS_OFFLINE=0 TRANSFORMERS_OFFLINE=0

paper-table-glue-t5base: install
	$(PAPER_ENV) $(COMPARE) compare=glue_t5base data.dir=null compare.dir=$(COMPARE_OUT)/glue_t5base \
	  compare.designs=[$(BASELINES),$(DESIGN)] $(COMPARE_ARGS)

paper-table-glue-t5-3b: install
	$(PAPER_ENV) $(COMPARE) compare=glue_t5_3b data.dir=null compare.dir=$(COMPARE_OUT)/glue_t5_3b \
	  compare.designs=[$(BASELINES),$(DESIGN_ANY)] $(COMPARE_ARGS)

paper-table-glue-roberta-base: install
	$(PAPER_ENV) $(COMPARE) compare=glue_roberta_base data.dir=null compare.dir=$(COMPARE_OUT)/glue_roberta_base \
	  compare.designs=[$(BASELINES),$(DESIGN_ANY)] $(COMPARE_ARGS)

paper-table-glue-roberta-large: install
	$(PAPER_ENV) $(COMPARE) compare=glue_roberta_large data.dir=null compare.dir=$(COMPARE_OUT)/glue_roberta_large \
	  compare.designs=[$(BASELINES),$(DESIGN_ANY)] $(COMPARE_ARGS)

paper-table-gen-bart: install
	set -e; for m in bart_base bart_large; do \
	  $(PAPER_ENV) $(COMPARE) compare=gen_bart model=$$m data.dir=null compare.name=gen_$$m \
	    compare.dir=$(COMPARE_OUT)/gen_$$m compare.designs=[$(BASELINES),$(DESIGN_ANY)] $(COMPARE_ARGS); \
	done
