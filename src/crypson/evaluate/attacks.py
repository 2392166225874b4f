"""Inversion-resistance attacks on the mask schemes (DESIGN.md, "Inversion-resistance evaluation").

Attackers know every public weight and the scheme, never the key (Kerckhoffs's principle). They see the
payload bytes of each message, parsed into numbers by `payload_features`, and the character positions.
Headline figure: advantage = (attacker accuracy - chance) / (receiver accuracy - chance); 0 is ideal.

| attacker          | what it does                                                                  |
|-------------------|-------------------------------------------------------------------------------|
| known-model       | removes whatever part of the mask is public, then runs the public classifier  |
| timestep-search   | keyed-timestep: tries candidate t on the public curve E(t), keeps the surest  |
| linear-probe      | logistic regression from (ciphertext, position) to the character             |
| learned-inversion | MLP from (ciphertext, position), best of fresh restarts (Abadi & Andersen 2016) |
| known-plaintext   | the learned inversion trained on pairs under the SAME key, fresh nonces       |

The image-predicting inversion (PSNR/SSIM against the receiver's image) and nonce reuse are in
`crypson.evaluate.inversion`; channel noise and the end-to-end error rate in `crypson.evaluate.channel`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from crypson.cipher.keys import KEY_BYTES, NONCE_BYTES, SecretKey, derive_message_keys
from crypson.cipher.masks import (
    TIMESTEP_RANGE,
    UINT16_MODULUS,
    KeyedGaussianMask,
    KeyedModularMask,
    KeyedTimestepMask,
    MaskScheme,
    ReportMask,
)
from crypson.evaluate.learned import (argmax_accuracy, best_of_restarts, num_positions, standardised_inputs,
                                     with_positions)
from crypson.evaluate.stats import wilson_interval
from crypson.inference import chunked, inference_chunk
from crypson.progress import Progress


@dataclass(frozen=True)
class AttackData:
    """What every attack suite works on: cGAN characters' latents (what the cipher sends), and the public
    receiver that reads them.

    Attributes:
        train_latents, train_labels: (N, d) float32 CPU latents and (N,) int64 classes the attackers learn from.
        test_latents, test_labels: the held-out characters every attacker is scored on (at least one).
        classifier: the public receiver classifier, (N, d) latents -> (N, K) logits.
        receiver_accuracy: the receiver's accuracy on the test characters (the advantage's denominator).
        num_classes: K >= 2; chance is 1 / K.
        message_length: characters per simulated message (one key and nonce each).
    """

    train_latents: torch.Tensor
    train_labels: torch.Tensor
    test_latents: torch.Tensor
    test_labels: torch.Tensor
    classifier: nn.Module
    receiver_accuracy: float
    num_classes: int
    message_length: int = 16

    def __post_init__(self) -> None:
        train, test = (len(self.train_latents), len(self.train_labels)), (len(self.test_latents), len(self.test_labels))
        if train[0] != train[1] or test[0] != test[1]:
            raise ValueError(f"latents and labels differ in length: train {train[0]} vs {train[1]}, "
                             f"test {test[0]} vs {test[1]}")
        if test[1] == 0 or self.num_classes < 2:
            raise ValueError(f"need test characters and num_classes >= 2, got {test[1]} and {self.num_classes}")
        if self.message_length < 1:
            raise ValueError(f"message_length must be >= 1, got {self.message_length}")

    @property
    def chance(self) -> float:
        return 1.0 / self.num_classes

    def scored(self, scheme: str, attacker: str, accuracy: float, note: str = "") -> AttackResult:
        """An attacker's accuracy on the test characters, with its interval and advantage."""
        return scored_result(scheme, attacker, accuracy, len(self.test_labels), self.chance, self.receiver_accuracy,
                             note)


@dataclass(frozen=True)
class AttackResult:
    """One attacker against one scheme; accuracy over `samples` test characters, 95% Wilson interval."""

    scheme: str
    attacker: str
    accuracy: float
    ci_low: float
    ci_high: float
    chance: float
    receiver_accuracy: float
    advantage: float
    samples: int
    note: str = ""


def advantage(accuracy: float, chance: float, receiver_accuracy: float) -> float:
    """(accuracy - chance) / (receiver_accuracy - chance); NaN when the receiver is no better than chance."""
    if receiver_accuracy <= chance:
        return math.nan
    return (accuracy - chance) / (receiver_accuracy - chance)


def payload_features(scheme: MaskScheme, payload: bytes, count: int) -> torch.Tensor:
    """Parse a payload's public number format, without the key.

    Args:
        scheme: the MaskScheme that made the payload.
        payload: count * scheme.bytes_per_character bytes.
        count: the number of characters N.
    Returns:
        (N, d) float32: the masked values for the float schemes; an exact scheme's uint16 words / 2^16,
        in [0, 1).
    """
    if len(payload) != count * scheme.bytes_per_character:
        raise ValueError(f"{scheme.name} payload has {len(payload)} bytes, expected "
                         f"{count} x {scheme.bytes_per_character}")
    numbers = np.frombuffer(bytes(payload), dtype=scheme.payload_dtype).astype(np.float64)
    if scheme.exact:
        numbers = numbers / UINT16_MODULUS
    return torch.from_numpy(numbers.reshape(count, scheme.latent_dim)).float()


def make_ciphertexts(
    scheme: MaskScheme, latents: torch.Tensor, message_length: int, seed: int, same_key: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask consecutive runs of `message_length` latents as messages, as a sender would.

    Each message gets a fresh key and nonce (or, with `same_key`, one key and fresh nonces: the
    known-plaintext setting). Keys come from a seeded generator so an evaluation is reproducible; the
    attackers never see them.

    Args:
        scheme: the mask scheme.
        latents: (N, d) float32 CPU latents; the last message may be shorter.
        message_length: characters per message, >= 1.
        seed: seeds the keys and nonces.
        same_key: one long-term key for every message.
    Returns:
        (features (N, d) from `payload_features`, positions (N,) int64 within each message).
    """
    if message_length < 1:
        raise ValueError(f"message_length must be >= 1, got {message_length}")
    rng = np.random.default_rng(seed)
    shared_key = SecretKey(rng.bytes(KEY_BYTES))
    features, positions = [], []
    for start in range(0, len(latents), message_length):
        message = latents[start : start + message_length]
        key = shared_key if same_key else SecretKey(rng.bytes(KEY_BYTES))
        mask_key = derive_message_keys(key, rng.bytes(NONCE_BYTES)).mask_key
        features.append(payload_features(scheme, scheme.mask(message, mask_key), len(message)))
        positions.append(torch.arange(len(message), dtype=torch.int64))
    if not features:
        return torch.zeros(0, scheme.latent_dim), torch.zeros(0, dtype=torch.int64)
    return torch.cat(features), torch.cat(positions)


def _class_probabilities(classifier: nn.Module, latents: torch.Tensor) -> torch.Tensor:
    """Softmax of the public classifier over (N, d) latents, batched, on the CPU."""
    parameter = next(classifier.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    return chunked(lambda batch: torch.softmax(classifier(batch.to(device)).float(), dim=1).cpu(), latents,
                   inference_chunk(device))


def mean_timestep_embedding(scheme: KeyedTimestepMask, samples: int = 4096, seed: int = 0) -> torch.Tensor:
    """Monte Carlo estimate of E[E(t)], t uniform on [0, 2^20): the public part of the keyed-timestep mask."""
    generator = torch.Generator().manual_seed(seed)
    timesteps = torch.randint(0, TIMESTEP_RANGE, (samples,), generator=generator)
    return scheme.position_embedding(timesteps).mean(0)  # (d,)


def known_model_attack(
    scheme: MaskScheme, features: torch.Tensor, positions: torch.Tensor, classifier: nn.Module
) -> torch.Tensor:
    """Remove the public part of the mask (`known_model_latents`), then classify with the public classifier.

    Returns:
        (N,) int64 predicted class indices.
    """
    return _class_probabilities(classifier, known_model_latents(scheme, features, positions)).argmax(1)


def known_model_latents(scheme: MaskScheme, features: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """The attacker's best keyless guess of the latents: the ciphertext minus the public part of the mask.

    report: subtract E(position), a full break. keyed-timestep: subtract the mean of E(t) over its range.
    keyed-gaussian: the mask has mean 0, so take the ciphertext as is. keyed-modular: read the
    uint16 words as if unmasked and dequantise them.

    Returns:
        (N, d) float32 latents.
    """
    if isinstance(scheme, ReportMask):
        latents = features - scheme.position_embedding(positions)
    elif isinstance(scheme, KeyedTimestepMask):
        latents = features - mean_timestep_embedding(scheme)
    elif isinstance(scheme, KeyedGaussianMask):
        latents = features
    elif isinstance(scheme, KeyedModularMask):
        words = torch.round(features.double() * UINT16_MODULUS).clamp(0, scheme.levels).to(torch.int64)
        latents = scheme.dequantise(words)
    else:
        raise ValueError(f"no known-model attack for scheme {scheme.name!r}")
    return latents.float()


def timestep_search_attack(
    scheme: KeyedTimestepMask, features: torch.Tensor, classifier: nn.Module, grid_size: int = 1024, seed: int = 0
) -> torch.Tensor:
    """For each character try `grid_size` candidate timesteps t on the public curve E(t) and keep the
    candidate latent features - E(t) the classifier is surest of (highest max softmax probability).

    The candidates are random integers from [0, 2^20), the exact set the keyed stream draws from.

    Returns:
        (N,) int64 predicted class indices.
    """
    generator = torch.Generator().manual_seed(seed)
    candidates = scheme.position_embedding(torch.randint(0, TIMESTEP_RANGE, (grid_size,), generator=generator))

    def search(chunk: torch.Tensor) -> torch.Tensor:
        trial_latents = (chunk[:, None, :] - candidates[None, :, :]).reshape(-1, chunk.shape[1])  # (B * G, d)
        probabilities = _class_probabilities(classifier, trial_latents)  # (B * G, K)
        confidence, predicted = probabilities.view(len(chunk), grid_size, probabilities.shape[1]).max(2)  # (B, G)
        return predicted[torch.arange(len(chunk)), confidence.argmax(1)]  # (B,)

    return chunked(search, features, max(1, 65536 // grid_size))  # 65,536 trial latents a chunk


def linear_probe_attack(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    train_positions: torch.Tensor | None = None,
    test_positions: torch.Tensor | None = None,
) -> float:
    """Multinomial logistic regression from standardised (ciphertext, position one-hot) to the character.

    Returns:
        Accuracy on the test characters.
    """
    count = num_positions(train_positions, test_positions)
    train_inputs = with_positions(train_features, train_positions, count).numpy()
    from sklearn.linear_model import LogisticRegression  # scikit-learn loads only for this attacker
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(train_inputs)
    probe = LogisticRegression(max_iter=1000)
    probe.fit(scaler.transform(train_inputs), train_labels.numpy())
    predicted = probe.predict(scaler.transform(with_positions(test_features, test_positions, count).numpy()))
    return float((predicted == test_labels.numpy()).mean())


def learned_inversion_attack(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    train_positions: torch.Tensor | None = None,
    test_positions: torch.Tensor | None = None,
    num_classes: int | None = None,
    restarts: int = 3,
    epochs: int = 30,
    hidden: int = 64,
    seed: int = 0,
) -> float:
    """An MLP trained on (ciphertext, position one-hot) -> character, best of `restarts` fresh inits picked
    on a validation split of the training pairs (crypson.evaluate.learned).

    Returns:
        Accuracy of the chosen restart on the test characters.
    """
    num_classes = num_classes or int(max(train_labels.max(), test_labels.max())) + 1
    train_inputs, test_inputs = standardised_inputs(train_features, train_positions, test_features, test_positions)
    model = best_of_restarts(train_inputs, train_labels, num_classes, nn.functional.cross_entropy, argmax_accuracy,
                             restarts, epochs, hidden, seed)
    with torch.no_grad():
        return argmax_accuracy(model(test_inputs), test_labels)


def scored_result(scheme: str, attacker: str, accuracy: float, samples: int, chance: float, receiver_accuracy: float,
            note: str = "") -> AttackResult:
    """An AttackResult with its 95% Wilson interval and advantage filled in."""
    low, high = wilson_interval(round(accuracy * samples), samples)
    return AttackResult(scheme=scheme, attacker=attacker, accuracy=accuracy, ci_low=low, ci_high=high, chance=chance,
                        receiver_accuracy=receiver_accuracy, advantage=advantage(accuracy, chance, receiver_accuracy),
                        samples=samples, note=note)


def _scheme_notes(scheme: MaskScheme, latents_train: torch.Tensor) -> str:
    """keyed-gaussian: the information bound per character (Cover & Thomas Thm 9.1.1) at the data's variance."""
    if not isinstance(scheme, KeyedGaussianMask):
        return ""
    latent_variance = float(latents_train.double().var(0).mean())
    bits = scheme.information_bound_bits(latent_variance)
    return (f"information bound {bits:.3f} bits/character "
            f"(mean latent variance {latent_variance:.3f}, sigma {scheme.sigma:g}, d {scheme.latent_dim})")


def run_attack_suite(schemes: Sequence[MaskScheme], data: AttackData, seed: int = 0, quick: bool = False,
                     restarts: int | None = None, epochs: int | None = None,
                     grid_size: int | None = None) -> list[AttackResult]:
    """Every attacker against every scheme, on ciphertexts made here under fresh random keys.

    Args:
        schemes: the mask schemes, with the sender's settings.
        data: the characters the attackers learn from and are scored on, and the public receiver.
        seed: seeds keys, nonces, candidate timesteps and the attackers' networks.
        quick: one restart, few epochs, a coarse timestep grid (tests and smoke runs).
        restarts, epochs, grid_size: the learned attackers' restarts and epochs and the timestep
            search's candidates; None takes the quick or full default.
    Returns:
        One AttackResult per (scheme, attacker), in scheme order.
    """
    quick_defaults, full_defaults = (1, 10, 256), (3, 30, 1024)
    defaults = quick_defaults if quick else full_defaults
    restarts, epochs, grid_size = (given if given is not None else default
                                   for given, default in zip((restarts, epochs, grid_size), defaults))
    train_labels, test_labels = data.train_labels, data.test_labels
    results = []
    # Four attackers a scheme, five with the timestep search.
    progress = Progress("attack", sum(4 + isinstance(scheme, KeyedTimestepMask) for scheme in schemes))
    for index, scheme in enumerate(schemes):
        seeds = np.random.default_rng([seed, index]).integers(2**32, size=3)
        train_seed, test_seed, same_key_seed = (int(value) for value in seeds)
        train_features, train_positions = make_ciphertexts(scheme, data.train_latents, data.message_length,
                                                           train_seed)
        test_features, test_positions = make_ciphertexts(scheme, data.test_latents, data.message_length, test_seed)
        note = _scheme_notes(scheme, data.train_latents)

        with progress.step(f"{scheme.name}: known-model"):
            predicted = known_model_attack(scheme, test_features, test_positions, data.classifier)
        accuracy = float((predicted == test_labels).float().mean())
        results.append(data.scored(scheme.name, "known-model", accuracy, note))
        if isinstance(scheme, KeyedTimestepMask):
            with progress.step(f"{scheme.name}: timestep-search over {grid_size} candidates"):
                predicted = timestep_search_attack(scheme, test_features, data.classifier, grid_size, seed)
            accuracy = float((predicted == test_labels).float().mean())
            results.append(data.scored(scheme.name, "timestep-search", accuracy,
                                       f"{grid_size} candidate t of {TIMESTEP_RANGE}"))

        with progress.step(f"{scheme.name}: linear-probe"):
            accuracy = linear_probe_attack(train_features, train_labels, test_features, test_labels,
                                           train_positions, test_positions)
        results.append(data.scored(scheme.name, "linear-probe", accuracy, note))
        with progress.step(f"{scheme.name}: learned-inversion ({restarts} restarts)"):
            accuracy = learned_inversion_attack(train_features, train_labels, test_features, test_labels,
                                                train_positions, test_positions, data.num_classes, restarts, epochs,
                                                seed=seed)
        results.append(data.scored(scheme.name, "learned-inversion", accuracy, note))

        # Known plaintext: the attacker holds (ciphertext, character) pairs under the victim's key, new nonces.
        all_features, all_positions = make_ciphertexts(scheme, torch.cat([data.train_latents, data.test_latents]),
                                                       data.message_length, same_key_seed, same_key=True)
        split = len(data.train_latents)
        with progress.step(f"{scheme.name}: known-plaintext ({restarts} restarts)"):
            accuracy = learned_inversion_attack(all_features[:split], train_labels, all_features[split:],
                                                test_labels, all_positions[:split], all_positions[split:],
                                                data.num_classes, restarts, epochs, seed=seed)
        results.append(data.scored(scheme.name, "known-plaintext", accuracy,
                                   "one key, fresh nonces; learned inversion"))
    return results
