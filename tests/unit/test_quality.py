"""Quality metrics on cases with a known answer: the Frechet distance against its closed form for
Gaussians, the character error rate against hand-counted edits, the judge CNN on a trivially
separable set, channel noise on the payload formats, and the report's figures."""

import numpy as np
import pytest
import torch
from scipy.linalg import sqrtm
from torch import nn

from crypson.cipher.alphabet import Alphabet
from crypson.cipher.masks import UINT16_MODULUS, get_scheme
from crypson.evaluate import figures
from crypson.evaluate.channel import add_channel_noise, channel_noise_accuracy, supported_corpus
from crypson.evaluate.corpus import MESSAGES
from crypson.evaluate.quality import (
    ReferenceCNN,
    character_error_rate,
    frechet_distance,
    frechet_distance_of_features,
    predict,
    train_reference_classifier,
)

pytestmark = pytest.mark.usefixtures("one_thread")

SCHEMES = ("report", "keyed-timestep", "keyed-gaussian", "keyed-modular")


class Identity(nn.Module):
    """The 'feature extractor' of raw d-dim samples: the Frechet distance of the samples themselves."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.num_features = dim

    def forward(self, samples: torch.Tensor) -> torch.Tensor:
        return samples


def closed_form(mean_a: np.ndarray, cov_a: np.ndarray, mean_b: np.ndarray, cov_b: np.ndarray) -> float:
    """|m_a - m_b|^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)) (Dowson & Landau 1982)."""
    root = sqrtm(cov_a @ cov_b).real
    return float(((mean_a - mean_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * root))


def test_frechet_distance_of_identical_sets_is_zero():
    samples = torch.randn(500, 4, generator=torch.Generator().manual_seed(0))
    assert frechet_distance_of_features(Identity(4), samples, samples.clone()) == pytest.approx(0.0, abs=1e-6)


def test_frechet_distance_matches_closed_form_for_gaussians():
    generator = torch.Generator().manual_seed(1)
    # N(0, I) against N(mu, diag(s^2)): |mu|^2 + sum_i (1 + s_i^2 - 2 s_i) = 1.25 + (1 + 0 + 0.25) = 2.5
    mean, scale = torch.tensor([1.0, 0.0, -0.5]), torch.tensor([2.0, 1.0, 0.5])
    first = torch.randn(200_000, 3, generator=generator)
    second = mean + scale * torch.randn(200_000, 3, generator=generator)
    expected = float((mean**2).sum() + (1 + scale**2 - 2 * scale).sum())
    assert expected == pytest.approx(2.5)
    assert frechet_distance_of_features(Identity(3), first, second) == pytest.approx(expected, abs=0.03)
    # Non-commuting covariances: against scipy's matrix square root of the population parameters.
    cov_a, cov_b = np.array([[2.0, 0.8], [0.8, 1.0]]), np.array([[1.0, -0.3], [-0.3, 0.5]])
    mean_a, mean_b = np.array([0.0, 1.0]), np.array([0.5, 0.0])
    rng = np.random.default_rng(2)
    a = torch.from_numpy(rng.multivariate_normal(mean_a, cov_a, 200_000)).float()
    b = torch.from_numpy(rng.multivariate_normal(mean_b, cov_b, 200_000)).float()
    assert frechet_distance_of_features(Identity(2), a, b) == pytest.approx(
        closed_form(mean_a, cov_a, mean_b, cov_b), abs=0.03)
    with pytest.raises(ValueError, match="at least 2"):
        frechet_distance_of_features(Identity(2), a[:1], b)


def test_character_error_rate_counts_edits_over_reference_characters():
    assert character_error_rate(["HELLO WORLD"], ["HELLO WORLD"]) == 0.0
    assert character_error_rate(["kitten"], ["sitting"]) == pytest.approx(3 / 7)  # 2 substitutions, 1 insertion
    # corpus-level: total edits / total reference characters, (1 + 0) / (3 + 4)
    assert character_error_rate(["abd", "abcd"], ["abc", "abcd"]) == pytest.approx(1 / 7)
    with pytest.raises(ValueError, match="as many"):
        character_error_rate(["a"], ["a", "b"])


def _two_class_images(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Class 0: a bright left half; class 1: a bright right half; plus noise."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(count) % 2
    images = 0.1 * torch.rand(count, 1, 32, 32, generator=generator)
    images[labels == 0, :, :, :16] += 0.8
    images[labels == 1, :, :, 16:] += 0.8
    return images.clamp(0, 1), labels


def test_reference_classifier_learns_a_separable_set_and_is_seeded():
    images, labels = _two_class_images(256, seed=0)
    model = train_reference_classifier(images, labels, num_classes=2, epochs=2, seed=3, batch_size=32)
    test_images, test_labels = _two_class_images(64, seed=1)
    assert float((predict(model, test_images) == test_labels).float().mean()) == 1.0
    again = train_reference_classifier(images, labels, num_classes=2, epochs=2, seed=3, batch_size=32)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    assert model.features(test_images).shape == (64, model.num_features)
    # the two classes are far apart in its feature space, a class with itself is not
    left, right = test_images[test_labels == 0], test_images[test_labels == 1]
    assert frechet_distance(model, left, right) > 10 * frechet_distance(model, left[:16], left[16:])
    with pytest.raises(ValueError, match="epochs"):
        train_reference_classifier(images, labels, 2, epochs=0, seed=0)


def test_supported_corpus_removes_and_counts_unsupported_characters():
    digits = Alphabet(tuple("0123456789"))
    kept, removed = supported_corpus(["Room 314", "abc", "7 8"], digits)
    assert kept == [" 314", "7 8"] and removed == 4 + 3  # "Room" and "abc"; the all-space message is dropped
    balanced = Alphabet(tuple("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabdefghnqrt"))
    kept, removed = supported_corpus(MESSAGES, balanced)
    assert removed == 0 and kept == list(MESSAGES)  # the committed corpus fits EMNIST balanced
    assert sum(len(message) for message in MESSAGES) >= 800


@pytest.mark.parametrize("name", SCHEMES)
def test_zero_channel_noise_leaves_the_payload_unchanged(name):
    scheme = get_scheme(name)
    latents = torch.randn(5, 8, generator=torch.Generator().manual_seed(0))
    payload = scheme.mask(latents, bytes(range(32)))
    assert add_channel_noise(scheme, payload, np.zeros(40)) == payload
    with pytest.raises(ValueError, match="one noise value"):
        add_channel_noise(scheme, payload, np.zeros(39))


def test_modular_channel_noise_is_added_in_quantisation_steps_mod_2_16():
    scheme = get_scheme("keyed-modular", latent_dim=2, modular_range=6.0)
    step = 2 * scheme.range / scheme.levels
    payload = np.array([65535, 100], dtype=">u2").tobytes()
    noisy = add_channel_noise(scheme, payload, np.array([2 * step, -3 * step]))
    assert np.frombuffer(noisy, ">u2").tolist() == [1, 97]  # 65535 + 2 wraps to 1
    assert UINT16_MODULUS == 65536


def test_channel_noise_accuracy_from_exact_to_chance():
    """4 classes 4.2 apart and a nearest-centroid receiver: no noise is exact, huge noise is chance."""
    centroids = 3.0 * torch.eye(4, 8)
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(800) % 4
    latents = (centroids[labels] + 0.3 * torch.randn(800, 8, generator=generator)).float()
    receiver = nn.Linear(8, 4)
    with torch.no_grad():
        receiver.weight.copy_(centroids)
        receiver.bias.copy_(-0.5 * (centroids**2).sum(1))
    for name in SCHEMES:
        exact, noisy = channel_noise_accuracy(get_scheme(name), latents, labels, receiver, [0.0, 40.0], 16, seed=0)
        assert exact == pytest.approx(1.0, abs=0.01), name
        assert abs(noisy - 0.25) < 0.08, name
    with pytest.raises(ValueError, match="noise levels"):
        channel_noise_accuracy(get_scheme("report"), latents, labels, receiver, [-1.0], 16, seed=0)


def test_figures_are_png_and_projections_have_the_right_shape():
    latents = np.random.default_rng(0).standard_normal((120, 8))
    labels = np.arange(120) % 3
    for method, limit in (("pca", None), ("tsne", 50)):
        points, rows = figures.project_latents(latents, method, seed=0, max_points=limit)
        assert points.shape == (len(rows), 2) and len(rows) == (limit or 120)
        assert figures.embedding_png(points, labels[rows], ("a", "b", "c"), method).startswith(b"\x89PNG")
    assert figures.image_grid_png(torch.rand(6, 1, 32, 32), 3).startswith(b"\x89PNG")
    assert figures.noise_curve_png([0.0, 1.0], {"x": [0.9, 0.3]}, 0.25).startswith(b"\x89PNG")
    with pytest.raises(ValueError, match="pca or tsne"):
        figures.project_latents(latents, "umap", seed=0)
    assert ReferenceCNN(5)(torch.rand(2, 1, 32, 32)).shape == (2, 5)
