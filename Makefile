# clipes — every target installs what it needs first (into .venv) and runs from this folder.
#   make demo            the whole pipeline on the generated demo set with the bundled demo CLIP
#   make demo-model      retrain the bundled demo CLIP (about 13 minutes on 2 cores)
#   make demo-dino       retrain the bundled demo DINOv2 from the demo CLIP (about 15 minutes on 2 cores)
#   make test            the test suite (CPU, minutes)
#   make prepare-voc VOC=<VOC2012 folder> [SBD=<SBD dataset folder>]   check the tree; with SBD add train_aug
#   make prepare-coco ANNOTATIONS=<instances_*.json> IMAGES=<image folder> [OUT=..]   split file + GT PNGs
#   make cams DATASET=voc12 DATA_ROOT=... SPLIT=... CLIP=... WORK=... [DEVICE=cpu] [BATCH=n] [JOBS=n]
#   make refine WORK=... [DATASET=..] [DATA_ROOT=..] [SPLIT=..] [CLIP=..] [DEVICE=..] [JOBS=n] [OUT=..]
#   make eval WORK=... SPLIT=... [DATA_ROOT=..] [GT_DIR=..]
#   make train-seg CONFIG=... WORK=... [DATA_ROOT=..] [GPUS=n] [PRETRAINED=..] [LOSS=hard|soft] [OPTIONS="k=v ..."] [VERBOSE=1]
#   make test-seg CONFIG=... CHECKPOINT=... [WORK=..] [DATA_ROOT=..] [VAL_SPLIT=..] [GT_DIR=..]
#   make predict CHECKPOINT=... IMAGES=... OUT=... [SPLIT=..] [CONFIG=..] [DEVICE=..]
#   make viz WORK=... [DATA_ROOT=..] [N=..]   panels + WORK/viz/index.html; one image: clipes show <id> --work ...
#   make select-prompts DATASET=.. DATA_ROOT=.. SPLIT=.. CLIP=.. [POOL=..] [N_IMAGES=n] [OUT=..]
#   make train-weclip DATASET=.. DATA_ROOT=.. SPLIT=.. CLIP=.. WORK=.. [GPUS=n] [ITERS=n] [BATCH=n] [OPTIONS="k=v .."]
#   make predict-weclip CHECKPOINT=.. IMAGES=.. OUT=.. [CLIP=..] [SPLIT=..] [WORK=..] [DEVICE=..] [JOBS=n]
#   make masks-weclip CHECKPOINT=.. WORK=.. DATA_ROOT=.. SPLIT=.. [DATASET=..] [CLIP=..] [OUT=..] [DEVICE=..]
#   make train-weakclip WORK=.. [CONFIG=..] [SEEDS=<folder of mask PNGs>] [CLIP=..] [GPUS=n] [OPTIONS="k=v .."]
#   make masks-weakclip WORK=.. CHECKPOINT=.. [SPLIT=..] [OUT=..] [CLIP=..] [DEVICE=..]
#   make train-weclipplus DATASET=.. DATA_ROOT=.. SPLIT=.. CLIP=.. DINO=.. WORK=.. [GPUS=n] [ITERS=n] [BATCH=n]
#   make predict-weclipplus CHECKPOINT=.. IMAGES=.. OUT=.. [CLIP=..] [DINO=..] [SPLIT=..] [ARGS=--no-crf]
#   make masks-weclipplus CHECKPOINT=.. WORK=.. DATA_ROOT=.. SPLIT=.. [DATASET=..] [CLIP=..] [DINO=..] [OUT=..]
#   make train-excel DATA_ROOT=.. SPLIT=.. CLIP=.. ATTRIBUTES=.. WORK=.. [DATASET=..] [GPUS=n] [ITERS=n] [BATCH=n]
#   make predict-excel CHECKPOINT=.. IMAGES=.. OUT=.. [CLIP=..] [SPLIT=..] [ARGS=--no-crf]
#   make masks-excel CHECKPOINT=.. WORK=.. DATA_ROOT=.. SPLIT=.. [ATTRIBUTES=..] [CLIP=..] [OUT=..]
#   make cams-excel DATA_ROOT=.. SPLIT=.. CLIP=.. ATTRIBUTES=.. WORK=.. [DATASET=..] [OUT=..]   training-free
#   make bench-cams / bench-refine / bench-pipeline   speed of stages 1 and 2 (pipeline: the real commands)
#   make bench-weclip / bench-weakclip / bench-weclipplus / bench-excel [DEVICE=cuda]   training iteration by part

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
VENV_FLAGS ?=
# TORCH=cpu installs the pinned CPU torch; TORCH=none keeps whatever torch the venv already sees
# (create it with VENV_FLAGS=--system-site-packages to use your own CUDA build).
TORCH ?= cpu
BIN := $(VENV)/bin
STAMP := $(VENV)/.clipes-installed
CLIPES := $(BIN)/clipes
PIP := $(BIN)/python -m pip --disable-pip-version-check

# Options forwarded only when set, so the library's defaults stay the single source of truth.
opt = $(if $(strip $(2)),$(1) "$(2)")

.PHONY: install test demo demo-model demo-dino viz select-prompts prepare-voc prepare-coco cams refine eval train-seg test-seg predict train-weclip predict-weclip masks-weclip train-weakclip masks-weakclip train-weclipplus predict-weclipplus masks-weclipplus train-excel predict-excel masks-excel cams-excel bench-weclipplus bench-excel bench-cams bench-refine bench-pipeline bench-weclip bench-weakclip clean-demo help
help:
	@sed -n '2,30p' Makefile | sed 's/^# \{0,1\}//'

install: $(STAMP)
$(STAMP): requirements/base.txt requirements/torch-cpu.txt setup.cfg pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV_FLAGS) $(VENV)
	$(PIP) install -q "pip>=23.2,<26"
ifeq ($(TORCH),cpu)
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -r requirements/torch-cpu.txt -r requirements/base.txt
else
	$(PIP) install -q -r requirements/base.txt
endif
	$(PIP) install -q --no-deps --no-build-isolation -e .
	@touch $(STAMP)

# Test-only packages (transformers for the Hugging Face equality tests, pytest-xdist) go into the same venv.
TEST_STAMP := $(VENV)/.clipes-test-installed
$(TEST_STAMP): $(STAMP) requirements/test.txt
	$(PIP) install -q -r requirements/test.txt
	@touch $(TEST_STAMP)

# Two pytest workers, a test file each at a time, in file order (the long demo test first); the
# command tests' clipes processes then run on one thread each (tests/conftest.py).
TEST_WORKERS ?= -n 2 --dist loadfile --no-loadscope-reorder
test: install $(TEST_STAMP)
	$(BIN)/python -m pytest $(TEST_WORKERS) $(PYTEST_ARGS)

DEMO_WORK ?= work/demo
demo: install
	$(CLIPES) demo --work $(DEMO_WORK) $(ARGS)

# Retrains the bundled demo CLIP (demo/clip_demo_vit16.pt); see demo/README.md for its time.
demo-model: install
	$(CLIPES) demo-model $(ARGS)

# Retrains the bundled demo DINOv2 (demo/dino_demo_vit14.pth), distilled from the demo CLIP.
demo-dino: install
	$(CLIPES) demo-dino $(ARGS)

prepare-voc: install
	$(CLIPES) prepare-voc $(call opt,--voc,$(VOC)) $(call opt,--sbd,$(SBD)) $(ARGS)

prepare-coco: install
	$(CLIPES) prepare-coco $(call opt,--annotations,$(ANNOTATIONS)) $(call opt,--images,$(IMAGES)) \
	  $(call opt,--out,$(OUT)) $(ARGS)

cams: install
	$(CLIPES) cams $(call opt,--dataset,$(DATASET)) $(call opt,--data-root,$(DATA_ROOT)) \
	  $(call opt,--split,$(SPLIT)) $(call opt,--clip,$(CLIP)) $(call opt,--work,$(WORK)) \
	  $(call opt,--device,$(DEVICE)) $(call opt,--batch,$(BATCH)) $(call opt,--jobs,$(JOBS)) \
	  $(call opt,--shard,$(SHARD)) $(call opt,--prompt,$(PROMPT)) $(call opt,--classes,$(CLASSES)) \
	  $(call opt,--background,$(BACKGROUND)) $(call opt,--labels,$(LABELS)) $(call opt,--synonyms,$(SYNONYMS)) \
	  $(ARGS)

refine: install
	$(CLIPES) refine $(call opt,--work,$(WORK)) $(call opt,--out,$(OUT)) $(call opt,--dataset,$(DATASET)) \
	  $(call opt,--data-root,$(DATA_ROOT)) $(call opt,--split,$(SPLIT)) $(call opt,--clip,$(CLIP)) \
	  $(call opt,--device,$(DEVICE)) $(call opt,--batch,$(BATCH)) $(call opt,--jobs,$(JOBS)) $(ARGS)

eval: install
	$(CLIPES) eval $(call opt,--work,$(WORK)) $(call opt,--split,$(SPLIT)) $(call opt,--data-root,$(DATA_ROOT)) \
	  $(call opt,--gt-dir,$(GT_DIR)) $(call opt,--json,$(JSON)) $(ARGS)

# Stage 3. GPUS>1 starts one process per GPU with torchrun (mmengine's pytorch launcher).
SEG_RUN = $(if $(filter-out 0 1,$(GPUS)),$(BIN)/torchrun --nproc_per_node=$(GPUS) -m stages.cli,$(CLIPES))
SEG_LAUNCHER = $(if $(filter-out 0 1,$(GPUS)),--launcher pytorch)
SEG_OPTIONS = $(foreach o,$(OPTIONS),--option $(o)) $(if $(filter-out 0,$(VERBOSE)),--verbose)
SEG_DATA = $(call opt,--data-root,$(DATA_ROOT)) $(call opt,--dataset,$(DATASET)) $(call opt,--classes,$(CLASSES)) \
  $(call opt,--val-split,$(VAL_SPLIT)) $(call opt,--gt-dir,$(GT_DIR))

train-seg: install
	$(SEG_RUN) train-seg $(call opt,--config,$(CONFIG)) $(call opt,--work,$(WORK)) $(call opt,--out,$(OUT)) \
	  $(SEG_DATA) $(call opt,--split,$(SPLIT)) $(call opt,--pretrained,$(PRETRAINED)) $(call opt,--loss,$(LOSS)) \
	  $(SEG_LAUNCHER) $(SEG_OPTIONS) $(ARGS)

test-seg: install
	$(SEG_RUN) test-seg $(call opt,--config,$(CONFIG)) $(call opt,--checkpoint,$(CHECKPOINT)) \
	  $(call opt,--work,$(WORK)) $(call opt,--out,$(OUT)) $(SEG_DATA) $(SEG_LAUNCHER) $(SEG_OPTIONS) $(ARGS)

predict: install
	$(CLIPES) predict $(call opt,--checkpoint,$(CHECKPOINT)) $(call opt,--images,$(IMAGES)) $(call opt,--out,$(OUT)) \
	  $(call opt,--split,$(SPLIT)) $(call opt,--config,$(CONFIG)) $(call opt,--device,$(DEVICE)) $(ARGS)

# WeCLIP (docs/weclip.md). GPUS>1 trains with torchrun, one process per GPU.
WECLIP_MODEL = $(call opt,--dataset,$(DATASET)) $(call opt,--classes,$(CLASSES)) $(call opt,--background,$(BACKGROUND))
train-weclip: install
	$(SEG_RUN) train-weclip $(WECLIP_MODEL) $(call opt,--data-root,$(DATA_ROOT)) $(call opt,--split,$(SPLIT)) \
	  $(call opt,--clip,$(CLIP)) $(call opt,--work,$(WORK)) $(call opt,--out,$(OUT)) $(call opt,--labels,$(LABELS)) \
	  $(call opt,--iters,$(ITERS)) $(call opt,--batch,$(BATCH)) $(call opt,--jobs,$(JOBS)) $(SEG_LAUNCHER) \
	  $(SEG_OPTIONS) $(ARGS)

predict-weclip: install
	$(CLIPES) predict-weclip $(call opt,--checkpoint,$(CHECKPOINT)) $(call opt,--images,$(IMAGES)) \
	  $(call opt,--out,$(OUT)) $(call opt,--work,$(WORK)) $(call opt,--split,$(SPLIT)) $(call opt,--clip,$(CLIP)) \
	  $(call opt,--device,$(DEVICE)) $(call opt,--jobs,$(JOBS)) $(ARGS)

# WeakCLIP (docs/weakclip.md): seeds (WORK/masks or SEEDS=) -> train-weakclip -> masks-weakclip.
train-weakclip: install
	$(SEG_RUN) train-weakclip $(call opt,--work,$(WORK)) $(call opt,--config,$(CONFIG)) $(call opt,--seeds,$(SEEDS)) \
	  $(call opt,--out,$(OUT)) $(call opt,--clip,$(CLIP)) $(call opt,--data-root,$(DATA_ROOT)) \
	  $(call opt,--dataset,$(DATASET)) $(call opt,--classes,$(CLASSES)) $(call opt,--split,$(SPLIT)) \
	  $(call opt,--iters,$(ITERS)) $(call opt,--batch,$(BATCH)) $(call opt,--jobs,$(JOBS)) $(SEG_LAUNCHER) \
	  $(SEG_OPTIONS) $(ARGS)

masks-weakclip: install
	$(CLIPES) masks-weakclip $(call opt,--checkpoint,$(CHECKPOINT)) $(call opt,--work,$(WORK)) \
	  $(call opt,--out,$(OUT)) $(call opt,--split,$(SPLIT)) $(call opt,--clip,$(CLIP)) $(call opt,--config,$(CONFIG)) \
	  $(call opt,--data-root,$(DATA_ROOT)) $(call opt,--dataset,$(DATASET)) $(call opt,--device,$(DEVICE)) $(ARGS)

masks-weclip: install
	$(CLIPES) masks-weclip $(call opt,--checkpoint,$(CHECKPOINT)) $(call opt,--work,$(WORK)) $(call opt,--out,$(OUT)) \
	  $(call opt,--data-root,$(DATA_ROOT)) $(call opt,--split,$(SPLIT)) $(call opt,--clip,$(CLIP)) \
	  $(call opt,--labels,$(LABELS)) $(WECLIP_MODEL) $(call opt,--device,$(DEVICE)) $(ARGS)

# WeCLIP+ (docs/weclipplus.md): WeCLIP with a frozen DINOv2 (DINO=<weights file or Hugging Face folder>).
train-weclipplus: install
	$(SEG_RUN) train-weclipplus $(WECLIP_MODEL) $(call opt,--data-root,$(DATA_ROOT)) $(call opt,--split,$(SPLIT)) \
	  $(call opt,--clip,$(CLIP)) $(call opt,--dino,$(DINO)) $(call opt,--work,$(WORK)) $(call opt,--out,$(OUT)) \
	  $(call opt,--labels,$(LABELS)) $(call opt,--iters,$(ITERS)) $(call opt,--batch,$(BATCH)) \
	  $(call opt,--jobs,$(JOBS)) $(SEG_LAUNCHER) $(SEG_OPTIONS) $(ARGS)

predict-weclipplus: install
	$(CLIPES) predict-weclipplus $(call opt,--checkpoint,$(CHECKPOINT)) $(call opt,--images,$(IMAGES)) \
	  $(call opt,--out,$(OUT)) $(call opt,--work,$(WORK)) $(call opt,--split,$(SPLIT)) $(call opt,--clip,$(CLIP)) \
	  $(call opt,--dino,$(DINO)) $(call opt,--device,$(DEVICE)) $(call opt,--jobs,$(JOBS)) $(ARGS)

masks-weclipplus: install
	$(CLIPES) masks-weclipplus $(call opt,--checkpoint,$(CHECKPOINT)) $(call opt,--work,$(WORK)) \
	  $(call opt,--out,$(OUT)) $(call opt,--data-root,$(DATA_ROOT)) $(call opt,--split,$(SPLIT)) \
	  $(call opt,--clip,$(CLIP)) $(call opt,--dino,$(DINO)) $(call opt,--labels,$(LABELS)) $(WECLIP_MODEL) \
	  $(call opt,--device,$(DEVICE)) $(ARGS)

# ExCEL (docs/excel.md): ATTRIBUTES=<the ExCEL repository's *_embedding_bank.pth, or a descriptor JSON>.
EXCEL_MODEL = $(WECLIP_MODEL) $(call opt,--attributes,$(ATTRIBUTES))
train-excel: install
	$(SEG_RUN) train-excel $(EXCEL_MODEL) $(call opt,--data-root,$(DATA_ROOT)) $(call opt,--split,$(SPLIT)) \
	  $(call opt,--clip,$(CLIP)) $(call opt,--work,$(WORK)) $(call opt,--out,$(OUT)) $(call opt,--labels,$(LABELS)) \
	  $(call opt,--iters,$(ITERS)) $(call opt,--batch,$(BATCH)) $(call opt,--jobs,$(JOBS)) \
	  $(call opt,--crop-rule,$(CROP_RULE)) $(call opt,--masks-dir,$(MASKS_DIR)) $(SEG_LAUNCHER) $(SEG_OPTIONS) $(ARGS)

predict-excel: install
	$(CLIPES) predict-excel $(call opt,--checkpoint,$(CHECKPOINT)) $(call opt,--images,$(IMAGES)) \
	  $(call opt,--out,$(OUT)) $(call opt,--work,$(WORK)) $(call opt,--split,$(SPLIT)) $(call opt,--clip,$(CLIP)) \
	  $(call opt,--device,$(DEVICE)) $(call opt,--jobs,$(JOBS)) $(ARGS)

masks-excel: install
	$(CLIPES) masks-excel $(call opt,--checkpoint,$(CHECKPOINT)) $(call opt,--work,$(WORK)) $(call opt,--out,$(OUT)) \
	  $(call opt,--data-root,$(DATA_ROOT)) $(call opt,--split,$(SPLIT)) $(call opt,--clip,$(CLIP)) \
	  $(call opt,--labels,$(LABELS)) $(EXCEL_MODEL) $(call opt,--device,$(DEVICE)) $(ARGS)

cams-excel: install
	$(CLIPES) cams-excel $(EXCEL_MODEL) $(call opt,--data-root,$(DATA_ROOT)) $(call opt,--split,$(SPLIT)) \
	  $(call opt,--clip,$(CLIP)) $(call opt,--work,$(WORK)) $(call opt,--out,$(OUT)) $(call opt,--labels,$(LABELS)) \
	  $(call opt,--device,$(DEVICE)) $(ARGS)

viz: install
	$(CLIPES) viz $(call opt,--work,$(WORK)) $(call opt,--data-root,$(DATA_ROOT)) $(call opt,--gt-dir,$(GT_DIR)) \
	  $(call opt,--n,$(N)) $(ARGS)

select-prompts: install
	$(CLIPES) select-prompts $(call opt,--dataset,$(DATASET)) $(call opt,--data-root,$(DATA_ROOT)) \
	  $(call opt,--split,$(SPLIT)) $(call opt,--clip,$(CLIP)) $(call opt,--out,$(OUT)) $(call opt,--pool,$(POOL)) \
	  $(call opt,--n-images,$(N_IMAGES)) $(call opt,--classes,$(CLASSES)) $(call opt,--background,$(BACKGROUND)) \
	  $(call opt,--labels,$(LABELS)) $(call opt,--synonyms,$(SYNONYMS)) $(call opt,--device,$(DEVICE)) $(ARGS)

BENCH_ARGS ?=
bench-cams: install
	$(BIN)/python benchmarks/bench_cams.py $(call opt,--device,$(DEVICE)) $(BENCH_ARGS)

bench-refine: install
	$(BIN)/python benchmarks/bench_refine.py $(call opt,--device,$(DEVICE)) $(BENCH_ARGS)

# The real commands (cams --save-affinity, refine --no-crf, refine) at two split sizes: what a user gets.
bench-pipeline: install
	$(BIN)/python benchmarks/bench_pipeline.py $(call opt,--device,$(DEVICE)) $(BENCH_ARGS)

bench-weclip: install
	$(BIN)/python benchmarks/bench_weclip.py $(call opt,--device,$(DEVICE)) $(BENCH_ARGS)

bench-weakclip: install
	$(BIN)/python benchmarks/bench_weakclip.py $(call opt,--device,$(DEVICE)) $(BENCH_ARGS)

bench-weclipplus: install
	$(BIN)/python benchmarks/bench_weclipplus.py $(call opt,--device,$(DEVICE)) $(BENCH_ARGS)

bench-excel: install
	$(BIN)/python benchmarks/bench_excel.py $(call opt,--device,$(DEVICE)) $(BENCH_ARGS)

clean-demo:
	rm -rf $(DEMO_WORK)
