"""Default config: Dassl's key names and defaults, plus the project's additions.

Keys are Dassl's so that CoOp/APT configs and scripts carry over. Keys the
project adds carry a comment with their unit and range.
"""
from __future__ import annotations

from yacs.config import CfgNode as CN

_C = CN()

_C.VERSION = 1
_C.OUTPUT_DIR = "./output"
_C.RESUME = ""
_C.SEED = -1  # -1: no seed; any value >= 0 (0 included) seeds python, numpy and torch
_C.USE_CUDA = True  # use a GPU when one is available; CPU otherwise
_C.VERBOSE = True

# ---------------------------------------------------------------- input
_C.INPUT = CN()
_C.INPUT.SIZE = (224, 224)
_C.INPUT.NO_TRANSFORM = False
_C.INPUT.INTERPOLATION = "bilinear"
_C.INPUT.TRANSFORMS = ()
_C.INPUT.PIXEL_MEAN = [0.485, 0.456, 0.406]
_C.INPUT.PIXEL_STD = [0.229, 0.224, 0.225]
_C.INPUT.CROP_PADDING = 4
_C.INPUT.RRCROP_SCALE = (0.08, 1.0)
_C.INPUT.CUTOUT_N = 1
_C.INPUT.CUTOUT_LEN = 16
_C.INPUT.GN_MEAN = 0.0
_C.INPUT.GN_STD = 0.15
_C.INPUT.RANDAUGMENT_N = 2
_C.INPUT.RANDAUGMENT_M = 10
_C.INPUT.COLORJITTER_B = 0.4
_C.INPUT.COLORJITTER_C = 0.4
_C.INPUT.COLORJITTER_S = 0.4
_C.INPUT.COLORJITTER_H = 0.1
_C.INPUT.RGS_P = 0.2
_C.INPUT.GB_P = 0.5
_C.INPUT.GB_K = 21

# ---------------------------------------------------------------- dataset
_C.DATASET = CN()
_C.DATASET.ROOT = ""
_C.DATASET.NAME = ""
_C.DATASET.SOURCE_DOMAINS = ()
_C.DATASET.TARGET_DOMAINS = ()
_C.DATASET.NUM_LABELED = -1
_C.DATASET.NUM_SHOTS = -1
_C.DATASET.VAL_PERCENT = 0.1
_C.DATASET.STL10_FOLD = -1
_C.DATASET.CIFAR_C_TYPE = ""
_C.DATASET.CIFAR_C_LEVEL = 1
_C.DATASET.ALL_AS_UNLABELED = False
_C.DATASET.SUBSAMPLE_CLASSES = "all"  # all | base | new (CoOp's base-to-new setting)

# ---------------------------------------------------------------- dataloader
_C.DATALOADER = CN()
_C.DATALOADER.NUM_WORKERS = 4
_C.DATALOADER.K_TRANSFORMS = 1
_C.DATALOADER.RETURN_IMG0 = False
_C.DATALOADER.TRAIN_X = CN()
_C.DATALOADER.TRAIN_X.SAMPLER = "RandomSampler"
_C.DATALOADER.TRAIN_X.BATCH_SIZE = 32
# torchrun: False splits BATCH_SIZE across the processes (global batch = BATCH_SIZE; must divide);
# True loads BATCH_SIZE per process (global batch = BATCH_SIZE x processes; OPTIM.LR is not scaled)
_C.DATALOADER.TRAIN_X.PER_DEVICE = False
_C.DATALOADER.TRAIN_X.N_DOMAIN = 0
_C.DATALOADER.TRAIN_X.N_INS = 16
_C.DATALOADER.TRAIN_U = CN()
_C.DATALOADER.TRAIN_U.SAME_AS_X = True
_C.DATALOADER.TRAIN_U.SAMPLER = "RandomSampler"
_C.DATALOADER.TRAIN_U.BATCH_SIZE = 32
_C.DATALOADER.TRAIN_U.N_DOMAIN = 0
_C.DATALOADER.TRAIN_U.N_INS = 16
_C.DATALOADER.TEST = CN()
_C.DATALOADER.TEST.SAMPLER = "SequentialSampler"
_C.DATALOADER.TEST.BATCH_SIZE = 32

# ---------------------------------------------------------------- model
_C.MODEL = CN()
_C.MODEL.INIT_WEIGHTS = ""
_C.MODEL.BACKBONE = CN()
_C.MODEL.BACKBONE.NAME = ""  # OpenAI CLIP name (ViT-B/32, RN50, ...), a checkpoint file, open_clip:<arch>, hf-hub:<org>/<name> or an open_clip folder
_C.MODEL.BACKBONE.PRETRAINED = ""  # open_clip:<arch> only: a pretrained tag (e.g. laion2b_s34b_b79k) or a weights file; "" otherwise
_C.MODEL.BACKBONE.ROBUST_WEIGHTS = ""  # optional file of robust visual weights (APT/TeCoA, or a visual state dict in clip's or open_clip's naming)
_C.MODEL.BACKBONE.DOWNLOAD_ROOT = ""  # download cache; "" = ~/.cache/clip (OpenAI, open_clip tags) or ~/.cache/huggingface (hf-hub)
_C.MODEL.TEXT_ENCODER = CN()  # how prompt trainers run the text tower; every setting gives the same features
_C.MODEL.TEXT_ENCODER.SHARED_PREFIX = True  # encode [SOS, ctx] once per prompt (unified context, class at the end)
_C.MODEL.TEXT_ENCODER.CHECKPOINT = False  # recompute text-block activations in backward: less memory, ~1 more forward
_C.MODEL.TEXT_ENCODER.CHUNK_SIZE = 0  # prompts (rows) per text-encoder chunk (>= 0; 0 = all at once)
_C.MODEL.HEAD = CN()
_C.MODEL.HEAD.NAME = ""
_C.MODEL.HEAD.HIDDEN_LAYERS = ()
_C.MODEL.HEAD.ACTIVATION = "relu"
_C.MODEL.HEAD.BN = True
_C.MODEL.HEAD.DROPOUT = 0.0

# ---------------------------------------------------------------- optim
_C.OPTIM = CN()
_C.OPTIM.NAME = "adam"
_C.OPTIM.LR = 0.0003
_C.OPTIM.WEIGHT_DECAY = 5e-4
_C.OPTIM.MOMENTUM = 0.9
_C.OPTIM.SGD_DAMPNING = 0
_C.OPTIM.SGD_NESTEROV = False
_C.OPTIM.RMSPROP_ALPHA = 0.99
_C.OPTIM.ADAM_BETA1 = 0.9
_C.OPTIM.ADAM_BETA2 = 0.999
_C.OPTIM.STAGED_LR = False
_C.OPTIM.NEW_LAYERS = ()
_C.OPTIM.BASE_LR_MULT = 0.1
_C.OPTIM.LR_SCHEDULER = "single_step"
_C.OPTIM.STEPSIZE = (-1,)
_C.OPTIM.GAMMA = 0.1
_C.OPTIM.MAX_EPOCH = 10
_C.OPTIM.WARMUP_EPOCH = -1
_C.OPTIM.WARMUP_TYPE = "linear"
_C.OPTIM.WARMUP_CONS_LR = 1e-5
_C.OPTIM.WARMUP_MIN_LR = 1e-5
_C.OPTIM.WARMUP_RECOUNT = True

# ---------------------------------------------------------------- train / test
_C.TRAIN = CN()
_C.TRAIN.CHECKPOINT_FREQ = 0
_C.TRAIN.PRINT_FREQ = 10
_C.TRAIN.COUNT_ITER = "train_x"

_C.TEST = CN()
_C.TEST.EVALUATOR = "Classification"
_C.TEST.PER_CLASS_RESULT = False
_C.TEST.COMPUTE_CMAT = False
_C.TEST.NO_TEST = False
_C.TEST.SPLIT = "test"
_C.TEST.FINAL_MODEL = "last_step"  # last_step | best_val
_C.TEST.PRECISION = "fp32"  # precision of the run's own clean/robust tests: fp32 | bf16 | fp16 (recorded)

# ---------------------------------------------------------------- adversarial (project)
_C.ADV = CN()
_C.ADV.TRAIN = CN()
_C.ADV.TRAIN.EPS = 4.0  # training attack L-inf budget, in 1/255 units (>= 1 typical; 0 = clean training)
_C.ADV.TRAIN.ALPHA = -1.0  # training attack step size, in 1/255 units; -1 = 2/3 * EPS (APT)
_C.ADV.TRAIN.STEPS = 3  # training attack PGD steps (>= 1)
_C.ADV.TRAIN.PROMPT = "onfly"  # prompt the training attack uses: onfly | constant | perturbed | perturbed_rms
# how the training PGD keeps pixels in [0, 1]: apt (APT's trainer: delta in [-EPS, EPS], only x + delta clamped;
# APT, AMPT) | fap (FAP's attack/pgd.py: delta itself kept in [-x, 1 - x]; the FAP family)
_C.ADV.TRAIN.PROJECTION = "apt"
# training objective: a registered term or a weighted sum, e.g. "ce", "trades", "fap+0.5*zs_kl" (ampt/objectives/);
# each term's own keys are added by the term (ADV.TRAIN.TRADES_BETA, ADV.TRAIN.FAP_LAMBDA, ADV.OBJECTIVE.<TERM>.*)
_C.ADV.TRAIN.LOSS = "ce"
_C.ADV.TRAIN.ATTACK_LOSS = ""  # term whose attack loss the training PGD maximises; "" = the first term of LOSS
# Prompt step per attack step (>= 0): "perturbed" (APT's PALPHA) a learning rate, the context moves by
# PROMPT_ALPHA x grad of the mean CE; "perturbed_rms" a fraction, it moves by PROMPT_ALPHA x RMS(context) x sign(grad)
_C.ADV.TRAIN.PROMPT_ALPHA = 0.05
_C.ADV.OBJECTIVE = CN()  # the loss terms' own keys, one node per term (ADV.OBJECTIVE.MART.BETA, ...)
# prompt of the frozen zero-shot CLIP that terms such as zs_kl compare with, one "{}"; "" = the dataset's template
_C.ADV.OBJECTIVE.ZERO_SHOT_TEMPLATE = ""
_C.ADV.TEST = CN()
_C.ADV.TEST.ATTACK = "pgd"  # robust test after training: an attack name, or "" for clean only
_C.ADV.TEST.EPS = -1.0  # in 1/255 units; -1 = ADV.TRAIN.EPS
_C.ADV.TEST.ALPHA = -1.0  # in 1/255 units; -1 = EPS / 4
_C.ADV.TEST.STEPS = 10  # PGD steps of the in-training robust test (evaluate.py uses 100)

# ---------------------------------------------------------------- trainer
_C.TRAINER = CN()
_C.TRAINER.NAME = ""


def get_cfg_default() -> CN:
    """A fresh, mutable copy of the defaults, with every registered loss term's own keys."""
    from ..objectives import add_objective_configs

    cfg = _C.clone()
    add_objective_configs(cfg)
    return cfg
