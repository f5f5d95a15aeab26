"""Suite-wide settings: one intra-op thread (tiny tensors; threads only add overhead)."""
import torch

torch.set_num_threads(1)
