"""The learned attackers' scaffold: their inputs, their network, and the best of fresh restarts.

Both learned attackers, the character classifier (`attacks.learned_inversion_attack`) and the latent
regressor (`inversion.learned_latent_inversion`), read a ciphertext character as its payload features
plus a one-hot of its position in the message, standardised with the training pairs' statistics, and
train a small MLP. As Abadi & Andersen (2016, "Learning to protect communications with adversarial
neural cryptography") retrain Eve from scratch, each restart starts anew; the best is picked on a 20%
validation split of the training pairs, never on the test set, so a chance-level attacker is not
flattered by the pick.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import torch
from torch import nn

log = logging.getLogger(__name__)

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def num_positions(*positions: torch.Tensor | None) -> int:
    """Positions one-hot encodes: the largest position given, plus one (1 when none is given)."""
    present = [p for p in positions if p is not None and len(p)]
    return int(max(int(p.max()) for p in present)) + 1 if present else 1


def with_positions(features: torch.Tensor, positions: torch.Tensor | None, count: int) -> torch.Tensor:
    """(N, d) features -> (N, d [+ count]) float64, with a one-hot of the position (capped at count - 1)."""
    if positions is None:
        return features.double()
    one_hot = nn.functional.one_hot(positions.clamp(max=count - 1), count)
    return torch.cat([features.double(), one_hot.double()], dim=1)


def standardised_inputs(train_features: torch.Tensor, train_positions: torch.Tensor | None,
                        test_features: torch.Tensor,
                        test_positions: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The learned attackers' float32 inputs: (ciphertext, position one-hot), standardised with the
    training inputs' mean and standard deviation (at least 1e-6), for the training and the test pairs."""
    count = num_positions(train_positions, test_positions)
    train_inputs = with_positions(train_features, train_positions, count).float()
    test_inputs = with_positions(test_features, test_positions, count).float()
    mean, std = train_inputs.mean(0), train_inputs.std(0).clamp_min(1e-6)
    return (train_inputs - mean) / std, (test_inputs - mean) / std


def train_mlp(inputs: torch.Tensor, targets: torch.Tensor, outputs: int, loss: Loss, epochs: int, hidden: int,
              seed: int) -> nn.Module:
    """One fresh MLP (input -> hidden -> hidden -> outputs) trained with Adam on `loss`, minibatch 256.

    Its initialisation and shuffles are seeded by `seed`; the caller's RNG is left untouched.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = nn.Sequential(nn.Linear(inputs.shape[1], hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                              nn.Linear(hidden, outputs))
    generator = torch.Generator().manual_seed(seed)
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(epochs):
        order = torch.randperm(len(inputs), generator=generator)
        for start in range(0, len(inputs), 256):
            batch = order[start : start + 256]
            value = loss(model(inputs[batch]), targets[batch])
            optimiser.zero_grad()
            value.backward()
            optimiser.step()
    return model.eval()


def best_of_restarts(inputs: torch.Tensor, targets: torch.Tensor, outputs: int, loss: Loss,
                     score: Callable[[torch.Tensor, torch.Tensor], float], restarts: int, epochs: int, hidden: int,
                     seed: int) -> nn.Module:
    """`restarts` fresh MLPs (`train_mlp`, seeds seed + 1, seed + 2, ...) on 80% of the pairs; the one
    `score` rates highest on the other 20% (a seeded split; the first of equals).

    Args:
        inputs, targets: the training pairs, (N, F) and (N, ...).
        outputs: the network's output width.
        loss: what each restart minimises, (predicted, targets) -> a scalar tensor.
        score: (predicted, targets) -> a number, higher is better, on the validation pairs.
        restarts: >= 1.
    Returns:
        The chosen network, in eval mode.
    """
    if restarts < 1:
        raise ValueError(f"restarts must be >= 1, got {restarts}")
    order = torch.randperm(len(inputs), generator=torch.Generator().manual_seed(seed))
    validation, fit = order[: len(order) // 5], order[len(order) // 5 :]
    best_score, best_model = -math.inf, None
    for restart in range(restarts):
        model = train_mlp(inputs[fit], targets[fit], outputs, loss, epochs, hidden, seed + 1 + restart)
        with torch.no_grad():
            value = score(model(inputs[validation]), targets[validation])
        log.info("  restart %d/%d: validation score %.4f", restart + 1, restarts, value)
        if value > best_score:
            best_score, best_model = value, model
    return best_model


def argmax_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The share of rows whose largest logit is the label's."""
    return float((logits.argmax(1) == labels).float().mean())
