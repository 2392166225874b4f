"""Attack suite on a synthetic setting where the answer is known: 4 well-separated classes in 8-d latents
and a fixed nearest-centroid receiver (accuracy ~1). The report scheme must come out broken, keyed-modular
at chance, and the statistics must match hand-computed values."""

import dataclasses
import inspect
import math

import numpy as np
import pytest
import torch
from torch import nn

from crypson.cipher.codec import encrypt
from crypson.cipher.masks import UINT16_MODULUS, get_scheme
from crypson.evaluate.attacks import (
    AttackData,
    AttackResult,
    advantage,
    known_model_attack,
    learned_inversion_attack,
    linear_probe_attack,
    make_ciphertexts,
    payload_features,
    run_attack_suite,
    timestep_search_attack,
    wilson_interval,
)
from crypson.evaluate.inversion import (
    PSNR_CAP_DB,
    NonceReuseResult,
    image_inversion_suite,
    latent_difference,
    learned_latent_inversion,
    mean_interval,
    nonce_reuse_attack,
    nonce_reuse_suite,
    score_images,
)
from crypson.evaluate.learned import argmax_accuracy, best_of_restarts, standardised_inputs, train_mlp
from crypson.evaluate.report import (
    EndToEnd,
    SenderCheck,
    attacks_markdown,
    candidates_needed,
    class_error_bounds,
    misread_chance,
    security_quality_markdown,
)

pytestmark = pytest.mark.usefixtures("one_thread")

NUM_CLASSES, DIM = 4, 8
CHANCE = 1.0 / NUM_CLASSES
CENTROIDS = 3.0 * torch.eye(NUM_CLASSES, DIM)  # (K, d), 4.2 apart


def _synthetic(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(count, d) latents = class centroid + N(0, 0.3^2) noise, balanced labels in a seeded order."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(count) % NUM_CLASSES
    labels = labels[torch.randperm(count, generator=generator)]
    latents = CENTROIDS[labels] + 0.3 * torch.randn(count, DIM, generator=generator)
    return latents.float(), labels


def _receiver() -> nn.Module:
    """Nearest centroid as a linear layer: score_k = c_k . z - |c_k|^2 / 2."""
    layer = nn.Linear(DIM, NUM_CLASSES)
    with torch.no_grad():
        layer.weight.copy_(CENTROIDS)
        layer.bias.copy_(-0.5 * (CENTROIDS**2).sum(1))
    return layer.eval().requires_grad_(False)


def _accuracy(predicted: torch.Tensor, labels: torch.Tensor) -> float:
    return float((predicted == labels).float().mean())


@pytest.fixture(scope="module")
def data():
    train, test = _synthetic(2000, seed=1), _synthetic(2000, seed=2)
    receiver = _receiver()
    receiver_accuracy = _accuracy(receiver(test[0]).argmax(1), test[1])
    assert receiver_accuracy > 0.99  # the setting itself: the receiver decrypts almost perfectly
    return train, test, receiver, receiver_accuracy


def test_wilson_interval_hand_computed():
    # p = 0.5, n = 100: centre 0.5, half width 1.96 sqrt(0.0025 + 1.96^2 / 40000) / (1 + 1.96^2 / 100) = 0.09617
    low, high = wilson_interval(50, 100)
    assert low == pytest.approx(0.40383, abs=1e-4) and high == pytest.approx(0.59617, abs=1e-4)
    # 0 of 10: low is exactly 0, high = 2 * (1.96^2 / 20) / (1 + 1.96^2 / 10) = 0.27753
    low, high = wilson_interval(0, 10)
    assert low == 0.0 and high == pytest.approx(0.27753, abs=1e-4)
    with pytest.raises(ValueError, match="successes"):
        wilson_interval(11, 10)


def test_advantage_hand_computed():
    assert advantage(0.625, 0.25, 1.0) == pytest.approx(0.5)
    assert advantage(0.25, 0.25, 0.9) == 0.0
    assert advantage(0.9, 0.25, 0.9) == pytest.approx(1.0)
    assert math.isnan(advantage(0.6, 0.5, 0.5))  # a receiver at chance gives no scale


def test_payload_features_parse_public_format():
    latents, _ = _synthetic(5, seed=3)
    report = get_scheme("report")
    features = payload_features(report, report.mask(latents, None), 5)
    assert torch.equal(features, latents + report.position_embedding(torch.arange(5)))  # float32: exact
    modular, key = get_scheme("keyed-modular"), bytes(range(32))
    payload = modular.mask(latents, key)
    words = torch.from_numpy(np.frombuffer(payload, ">u2").astype(np.float32)).reshape(5, DIM)
    features = payload_features(modular, payload, 5)
    assert torch.equal(features, words / UINT16_MODULUS) and features.min() >= 0 and features.max() < 1
    with pytest.raises(ValueError, match="expected"):
        payload_features(modular, payload, 4)


def test_make_ciphertexts_positions_and_keys():
    latents = CENTROIDS[torch.zeros(20, dtype=torch.int64)]  # 20 identical latents, messages of 8
    scheme = get_scheme("keyed-modular")
    features, positions = make_ciphertexts(scheme, latents, message_length=8, seed=0)
    assert features.shape == (20, DIM)
    assert positions.tolist() == list(range(8)) + list(range(8)) + list(range(4))
    again, _ = make_ciphertexts(scheme, latents, message_length=8, seed=0)
    assert torch.equal(features, again)  # seeded: reproducible
    assert len({tuple(row.tolist()) for row in features}) == 20  # fresh pads everywhere, even for one key:
    same_key, _ = make_ciphertexts(scheme, latents, message_length=8, seed=0, same_key=True)
    assert not torch.equal(same_key[:8], same_key[8:16])  # fresh nonces change the pad


def test_report_scheme_is_broken_by_known_model(data):
    _, (latents, labels), receiver, receiver_accuracy = data
    scheme = get_scheme("report")
    features, positions = make_ciphertexts(scheme, latents, message_length=16, seed=0)
    assert not torch.equal(features, latents)
    accuracy = _accuracy(known_model_attack(scheme, features, positions, receiver), labels)
    assert advantage(accuracy, CHANCE, receiver_accuracy) >= 0.9


def test_timestep_search_attacks_keyed_timestep(data):
    _, (latents, labels), receiver, receiver_accuracy = data
    scheme = get_scheme("keyed-timestep")
    features, _ = make_ciphertexts(scheme, latents[:400], message_length=16, seed=0)
    predicted = timestep_search_attack(scheme, features, receiver, grid_size=64)
    assert predicted.shape == (400,)
    # E(t) is small next to the class spacing here, so searching the public curve recovers the class
    assert advantage(_accuracy(predicted, labels[:400]), CHANCE, receiver_accuracy) >= 0.9


def test_identity_cipher_is_broken_by_linear_probe(data):
    (train_latents, train_labels), (test_latents, test_labels), _, receiver_accuracy = data
    accuracy = linear_probe_attack(train_latents, train_labels, test_latents, test_labels)
    assert advantage(accuracy, CHANCE, receiver_accuracy) >= 0.9


def test_fresh_uniform_mask_is_at_chance_for_learned_inversion(data):
    (_, train_labels), (_, test_labels), _, receiver_accuracy = data
    generator = torch.Generator().manual_seed(5)
    train_features = torch.rand(len(train_labels), DIM, generator=generator)  # independent of the labels
    test_features = torch.rand(len(test_labels), DIM, generator=generator)
    accuracy = learned_inversion_attack(train_features, train_labels, test_features, test_labels,
                                        restarts=2, epochs=5, seed=0)
    low, high = wilson_interval(round(accuracy * len(test_labels)), len(test_labels))
    assert low <= CHANCE <= high
    assert advantage(accuracy, CHANCE, receiver_accuracy) <= 0.1


def _attack_data(data, train: int | None = None, test: int | None = None) -> AttackData:
    """The fixture's characters (the first `train` and `test` of them) as the suites take them."""
    (train_latents, train_labels), (test_latents, test_labels), receiver, receiver_accuracy = data
    return AttackData(train_latents[:train], train_labels[:train], test_latents[:test], test_labels[:test], receiver,
                      receiver_accuracy, NUM_CLASSES)


def test_attack_data_checks_its_shapes_and_gives_chance(data):
    attack_data = _attack_data(data)
    assert attack_data.chance == CHANCE and attack_data.message_length == 16
    result = dataclasses.replace(attack_data, receiver_accuracy=0.75).scored("report", "known-model", 0.625, "n")
    assert (result.scheme, result.attacker, result.note, result.samples) == ("report", "known-model", "n", 2000)
    assert result.advantage == pytest.approx(0.75)  # (0.625 - 0.25) / (0.75 - 0.25)
    assert (result.ci_low, result.ci_high) == wilson_interval(1250, 2000)
    with pytest.raises(ValueError, match="differ in length: train 2000 vs 10"):
        AttackData(attack_data.train_latents, attack_data.train_labels[:10], attack_data.test_latents,
                   attack_data.test_labels, attack_data.classifier, 0.9, NUM_CLASSES)
    with pytest.raises(ValueError, match="num_classes >= 2, got 2000 and 1"):
        dataclasses.replace(attack_data, num_classes=1)


def test_learned_attackers_inputs_are_standardised_features_and_position_one_hots():
    features = torch.tensor([[1.0, 10.0], [3.0, 10.0], [5.0, 10.0], [7.0, 10.0]])
    positions = torch.tensor([0, 1, 0, 2])
    train, test = standardised_inputs(features, positions, features[:1] + 2, torch.tensor([5]))
    assert train.shape == (4, 2 + 6) and test.shape == (1, 8)  # positions 0..5: six one-hot columns
    torch.testing.assert_close(train.mean(0), torch.zeros(8))
    assert train[:, 0].tolist() == pytest.approx([-1.1619, -0.3873, 0.3873, 1.1619], abs=1e-4)  # (x - 4) / 2.582
    assert train[:, 1].abs().max() == 0  # a constant column stays 0 (its std is clamped to 1e-6)
    assert test[0, 0].item() == pytest.approx(-0.3873, abs=1e-4) and test[0, 7] > 0 and (test[0, 2:7] <= 0).all()


def test_best_of_restarts_keeps_the_restart_with_the_best_validation_score():
    inputs = torch.randn(50, 3, generator=torch.Generator().manual_seed(0))
    targets = (inputs[:, 0] > 0).long()
    order = torch.randperm(50, generator=torch.Generator().manual_seed(7))  # the split it draws under seed 7
    validation, fit = order[:10], order[10:]
    candidates = [train_mlp(inputs[fit], targets[fit], 2, nn.functional.cross_entropy, 2, 8, 7 + 1 + restart)
                  for restart in range(3)]  # its restarts' seeds: 8, 9, 10

    def score(predicted: torch.Tensor, _: torch.Tensor) -> float:  # any score: the sum of the first logit
        return float(predicted[:, 0].sum())

    with torch.no_grad():
        scores = [score(candidate(inputs[validation]), targets[validation]) for candidate in candidates]
    best = scores.index(max(scores))
    assert best != 0  # so that keeping the first restart would fail
    chosen = best_of_restarts(inputs, targets, 2, nn.functional.cross_entropy, score, 3, 2, 8, seed=7)
    with torch.no_grad():
        assert torch.equal(chosen(inputs), candidates[best](inputs))
    assert argmax_accuracy(torch.tensor([[0.0, 1.0], [2.0, 1.0]]), torch.tensor([1, 1])) == 0.5
    with pytest.raises(ValueError, match="restarts must be >= 1, got 0"):
        best_of_restarts(inputs, targets, 2, nn.functional.cross_entropy, score, 0, 2, 8, seed=7)


def test_suite_report_broken_and_keyed_modular_at_chance(data):
    schemes = ("report", "keyed-timestep", "keyed-gaussian", "keyed-modular")
    results = run_attack_suite([get_scheme(name) for name in schemes], _attack_data(data), quick=True)
    assert all(isinstance(result, AttackResult) and result.samples == 2000 for result in results)
    by_key = {(result.scheme, result.attacker): result for result in results}
    attackers = ("known-model", "linear-probe", "learned-inversion", "known-plaintext")
    expected = {(scheme, attacker) for scheme in schemes for attacker in attackers}
    assert set(by_key) == expected | {("keyed-timestep", "timestep-search")}
    assert by_key[("report", "known-model")].advantage >= 0.9
    for attacker in attackers:
        result = by_key[("keyed-modular", attacker)]
        assert result.advantage <= 0.1, result
        assert result.ci_low <= result.chance <= result.ci_high, result
    assert "information bound" in by_key[("keyed-gaussian", "known-model")].note


# --- image inversion, nonce reuse, the report ---------------------------------------------------------


def _fixed_decoder() -> nn.Module:
    """A public 'decoder' with fixed random weights: (N, 8) latents -> (N, 1, 32, 32) images in (0, 1)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(DIM, 32 * 32), nn.Sigmoid(), nn.Unflatten(1, (1, 32, 32))).eval()


def test_mean_interval_and_image_scores_hand_computed():
    mean, low, high = mean_interval(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    half_width = 1.96 * math.sqrt(5 / 3) / 2  # sample sd sqrt(5/3), n = 4
    assert (mean, low, high) == pytest.approx((2.5, 2.5 - half_width, 2.5 + half_width))
    images = torch.rand(4, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    exact = score_images("a", "s", images, images)
    assert exact.psnr_db == PSNR_CAP_DB and exact.ssim == pytest.approx(1.0, abs=1e-5) and exact.samples == 4
    shifted = score_images("a", "s", (images + 0.1).clamp(0, 1), images)
    assert shifted.psnr_db < 20.5 and shifted.psnr_ci[0] <= shifted.psnr_db <= shifted.psnr_ci[1]


def test_learned_latent_inversion_recovers_an_identity_cipher_and_not_noise(data):
    (train_latents, _), (test_latents, _), _, _ = data
    positions = torch.zeros(len(train_latents), dtype=torch.int64)
    predicted = learned_latent_inversion(train_latents, positions, train_latents, test_latents, positions,
                                         restarts=1, epochs=10)
    variance = float(test_latents.var(0).mean())  # the error of always guessing the mean latent
    assert float(((predicted - test_latents) ** 2).mean()) < 0.1 * variance
    noise = torch.rand(len(train_latents), DIM, generator=torch.Generator().manual_seed(1))
    blind = learned_latent_inversion(noise, positions, train_latents, noise.flip(0), positions, restarts=1, epochs=10)
    assert float(((blind - test_latents) ** 2).mean()) > 0.95 * variance


def test_image_inversion_suite_report_exact_keyed_modular_no_better_than_the_mean_image(data):
    schemes = [get_scheme("report"), get_scheme("keyed-modular")]
    results = image_inversion_suite(schemes, _attack_data(data, 1000, 500), _fixed_decoder(), restarts=1, epochs=5)
    by_key = {(r.scheme, r.attacker): r for r in results}
    assert set(by_key) == {("keyless", "mean-image")} | {(s, a) for s in ("report", "keyed-modular")
                                                  for a in ("known-model", "learned-inversion")}
    baseline = by_key[("keyless", "mean-image")]
    assert by_key[("report", "known-model")].psnr_db > 60  # exact up to float32 rounding
    assert by_key[("report", "learned-inversion")].psnr_db > baseline.psnr_db + 3
    for attacker in ("known-model", "learned-inversion"):
        assert by_key[("keyed-modular", attacker)].psnr_db <= baseline.psnr_ci[1] + 0.2


def test_latent_difference_reads_modular_words_as_signed():
    scheme = get_scheme("keyed-modular", latent_dim=1)
    first, second = torch.tensor([[65535 / UINT16_MODULUS]]), torch.tensor([[1 / UINT16_MODULUS]])
    step = 2 * scheme.range / scheme.levels
    assert latent_difference(scheme, first, second).item() == pytest.approx(2 * step)  # wraps forward by 2
    assert latent_difference(scheme, second, first).item() == pytest.approx(-2 * step)
    report = get_scheme("report", latent_dim=2)
    assert latent_difference(report, torch.tensor([[1.5, 0.0]]), torch.tensor([[0.25, 1.0]])).tolist() == [[-1.25, 1.0]]


def test_nonce_reuse_breaks_keyed_schemes_and_fresh_nonces_do_not(data):
    _, (test_latents, test_labels), receiver, _ = data
    results = nonce_reuse_suite([get_scheme("keyed-gaussian"), get_scheme("keyed-modular")], _attack_data(data), seed=0)
    for result in results:
        assert result.masks_identical, result
        assert result.reused.attacker == "nonce-reuse" and result.reused.advantage >= 0.9, result.reused
        assert result.fresh.advantage < result.reused.advantage - 0.5, result.fresh
    # keyed-modular with fresh nonces is a one-time pad: at chance. (keyed-gaussian is not: with classes this
    # far apart next to sigma its ciphertexts leak the class even without reuse, as its bound says.)
    modular = results[1].fresh
    assert modular.ci_low <= CHANCE <= modular.ci_high and modular.advantage <= 0.1, modular
    first, second = test_latents[:32], test_latents[32:64]
    _, identical = nonce_reuse_attack(get_scheme("keyed-modular"), first, test_labels[:32], second,
                                      CENTROIDS, receiver, 16, seed=0, reuse=False)
    assert identical is False
    with pytest.raises(ValueError, match="equal lengths"):
        nonce_reuse_attack(get_scheme("keyed-modular"), first, test_labels[:32], second[:8], CENTROIDS, receiver,
                           16, seed=0)


def test_the_cipher_api_takes_no_nonce_from_its_caller():
    assert "nonce" not in inspect.signature(encrypt).parameters
    assert [name for name in inspect.signature(encrypt).parameters] == ["models", "texts", "key", "scheme",
                                                                         "replace", "candidates", "allow_misread",
                                                                         "one_stream"]


def test_security_quality_report_shows_the_numbers(data):
    result = AttackResult("keyed-modular", "linear-probe", 0.26, 0.24, 0.28, CHANCE, 0.9, 0.015, 2000, "n")
    reuse = NonceReuseResult(AttackResult("keyed-modular", "nonce-reuse", 0.8, 0.78, 0.82, CHANCE, 0.9, 0.85, 1000),
                             AttackResult("keyed-modular", "nonce-fresh", 0.25, 0.23, 0.27, CHANCE, 0.9, 0.0, 1000),
                             True)
    image = score_images("learned-inversion", "keyed-modular", torch.full((4, 1, 32, 32), 0.5),
                         torch.full((4, 1, 32, 32), 0.6))
    markdown = security_quality_markdown(
        "keyed-modular", {"class_consistency": 0.4321, "frechet_distance": 12.345}, [result], [image], [reuse],
        [0.0, 0.5], {"keyed-modular": [0.9, 0.777]}, [EndToEnd("keyed-modular", 0.0625, 16, 1, [("AB", "AB")])],
        api_takes_nonce=False, sender=SenderCheck(4, ("A", "B"), (200, 2000), (200, 2000), 0.0125))
    for expected in ("0.432", "12.35", "| linear-probe | 0.260 (0.240-0.280)", "0.777", "| 0.062 | 1 | 16 |",
                     "| yes | 0.800", "20.00", "take no nonce", "## Quality", "### Nonce reuse", "(configured)",
                     "k = 4 candidate images", "(550 characters, 2200 candidates), 1.25% had no candidate",
                     # class A, 200 of 200 read back: q = z^2 / (n + z^2) = 3.8416 / 203.8416 = 0.018846
                     "| A | 200/200 | 1.0000 | 0.0188 | 1.3e-07 |", "Worst class 'A': q = 0.0188, q^4 = 1.3e-07",
                     "needs k >= 4", "the configured k = 4 meets it"):
        assert expected in markdown, expected
    assert markdown.index("| A | 200/200") < markdown.index("| B | 2000/2000")  # worst class first
    short = security_quality_markdown("keyed-modular", {}, [result], [image], [reuse], [0.0], {"keyed-modular": [0.9]},
                                      [], api_takes_nonce=False, sender=SenderCheck(2, ("A",), (200,), (200,), 0.0))
    assert "q^2 = 3.6e-04" in short and "needs k >= 4" in short and "the configured k = 2 does NOT meet it" in short
    assert "## keyed-modular" in attacks_markdown([result], "keyed-modular")


def test_misread_calculation_against_hand_computed_cases():
    # single-image accuracy 0.9: four candidates all misread with chance 0.1^4 = 1e-4; 1e-6 needs six
    assert misread_chance(1 - 0.9, 4) == pytest.approx(1e-4)
    assert candidates_needed(1 - 0.9) == 6 and candidates_needed(1 - 0.9, 1e-4) == 4
    assert candidates_needed(0.5) == 20  # 0.5^19 = 1.9e-6, 0.5^20 = 9.5e-7
    assert candidates_needed(0.0) == 1 and candidates_needed(1.0) is None
    # Wilson 95% upper bound of the error: 0 errors in n gives z^2 / (n + z^2); 50 of 50 still needs k = 6
    perfect, = class_error_bounds((50,), (50,))
    assert perfect == pytest.approx(3.8416 / 53.8416, rel=1e-6)
    assert candidates_needed(perfect) == 6 and misread_chance(perfect, 4) == pytest.approx(2.5915e-5, rel=1e-3)
    with pytest.raises(ValueError, match="error_rate"):
        candidates_needed(1.5)


def test_the_report_page_is_self_contained(tmp_path):
    """The HTML report inlines every figure it names (the page opens without its folder), renders the
    markdown's tables, and names an image it could not find instead of linking outside the folder."""
    import base64

    from crypson.evaluate.report import markdown_to_html

    figures = tmp_path / "reports" / "figures"
    figures.mkdir(parents=True)
    png = b"\x89PNG\r\n\x1a\n fake image bytes"
    (figures / "grid.png").write_bytes(png)
    (tmp_path / "secret.png").write_bytes(b"outside the report folder")
    markdown = ("# Report\n\n| scheme | advantage |\n|---|---|\n| keyed-modular | 0.007 |\n\n"
                "![grid](figures/grid.png) ![gone](figures/missing.png) ![out](../secret.png)\n")
    page = markdown_to_html(markdown, figures)
    assert f'src="data:image/png;base64,{base64.b64encode(png).decode()}"' in page
    assert 'data-missing="figures/missing.png"' in page and 'data-missing="../secret.png"' in page
    assert "<td>keyed-modular</td>" in page and "<h1>Report</h1>" in page
    assert "figures/grid.png\"" not in page and base64.b64encode(b"outside").decode()[:8] not in page
