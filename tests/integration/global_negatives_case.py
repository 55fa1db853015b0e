"""The fixed batch and projections test_global_negatives.py and its worker share."""
import torch

ROWS = 11  # ranks hold unequal shares (the last batch of an epoch): 6 and 5


def shares(world: int):
    return [ROWS // world + (1 if r < ROWS % world else 0) for r in range(world)]


def batch():
    g = torch.Generator().manual_seed(0)
    x = {"image": torch.randn(ROWS, 6, generator=g), "text": torch.randn(ROWS, 5, generator=g)}
    mask = {"image": torch.ones(ROWS, dtype=torch.bool), "text": torch.ones(ROWS, dtype=torch.bool)}
    mask["text"][[2, 8]] = False  # rows without a pair on either rank
    groups = torch.tensor([0, 1, 2, 3, 4, 1, 6, 7, 0, 9, 3])  # positives shared across the ranks' shares
    return x, mask, groups


def projections():
    torch.manual_seed(1)
    proj = torch.nn.ModuleDict({"image": torch.nn.Linear(6, 4), "text": torch.nn.Linear(5, 4)})
    return proj, torch.tensor(5.0), torch.tensor(-2.0)
