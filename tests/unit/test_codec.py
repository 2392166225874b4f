"""The codec's plumbing on small untrained models: ordering, spaces, tags, scheme settings.

Untrained networks do not recover the right characters; what is checked is that the receiver
gets exactly the sender's latents back (up to the scheme's quantisation) and classifies them as
the sender's models would, for every message of a batch.
"""

import dataclasses

import numpy as np
import pytest
import torch

from crypson.cipher import codec
from crypson.cipher.alphabet import Alphabet, AlphabetError
from crypson.cipher.envelope import AuthenticationError
from crypson.cipher.keys import generate_key
from crypson.cipher.masks import get_scheme
from crypson.models.cgan import Generator
from crypson.models.classifier import LatentClassifier
from crypson.models.vae import VAE

CLASSES = tuple("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabdefghnqrt")  # EMNIST balanced


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    vae = VAE(latent_dim=8, channels=(4, 4, 8, 8))
    return codec.CipherModels(Generator(len(CLASSES), 8, 4), vae,
                              LatentClassifier(vae.decoder, len(CLASSES), 16, 0.0), CLASSES,
                              {"crypson-cgan": "1", "crypson-vae": "1", "crypson-classifier": "1"})


@pytest.fixture
def fixed_randomness(monkeypatch):
    """The sender's fresh noise and decoys, made repeatable so the test can recompute them."""
    monkeypatch.setattr(codec.secrets, "randbits", lambda bits: 1234)


def expected_latents(models, texts):
    encoded = [models.alphabet.encode(t) for t in texts]
    index = np.concatenate([e.class_index for e in encoded])
    spaces = index < 0
    index[spaces] = np.random.default_rng(1234).integers(0, len(models.classes), spaces.sum())
    return codec.encode_characters(models, torch.from_numpy(index))


def test_batch_round_trip_returns_the_senders_latents(models, fixed_randomness):
    texts = ["Hello World 42", "", "a b", "Zz"]
    key = generate_key()
    scheme = get_scheme("keyed-modular")
    sent = expected_latents(models, texts)
    results = codec.decrypt(models, codec.encrypt(models, texts, key, scheme, max_draws=1), key)
    received = torch.cat([r.latents for r in results])
    assert torch.equal(received, scheme.dequantise(scheme.quantise(sent)))  # exact under keyed-modular
    # The receiver's text is what the sender's own classifier says of the sender's latents.
    expected = models.classifier(scheme.dequantise(scheme.quantise(sent))).argmax(1).numpy()
    start = 0
    for text, result in zip(texts, results):
        encoded = models.alphabet.encode(text)
        assert result.is_space.tolist() == encoded.is_space.tolist()
        assert [c == " " for c in result.text] == [c == " " for c in text]
        for position, char in enumerate(result.text):
            if char != " ":
                assert char == CLASSES[expected[start + position]]
        start += len(text)


@pytest.mark.parametrize("name", ["report", "keyed-timestep", "keyed-gaussian"])
def test_other_schemes_round_trip_the_latent(models, fixed_randomness, name):
    key = generate_key()
    sent = expected_latents(models, ["HELLO 42"])
    result, = codec.decrypt(models, codec.encrypt(models, ["HELLO 42"], key, get_scheme(name), max_draws=1), key)
    tolerance = 0.01 if name == "keyed-gaussian" else 1e-5  # fp16 payload for the Gaussian mask
    assert torch.allclose(result.latents, sent, atol=tolerance)


def test_each_encryption_is_fresh(models):
    key, scheme = generate_key(), get_scheme("keyed-modular")
    first, second = codec.encrypt(models, ["SAME", "SAME"], key, scheme)
    assert first.nonce != second.nonce and first.payload != second.payload


def test_wrong_key_and_tampering_give_no_plaintext(models):
    key, scheme = generate_key(), get_scheme("keyed-modular")
    envelope, = codec.encrypt(models, ["SECRET"], key, scheme)
    with pytest.raises(AuthenticationError):
        codec.decrypt(models, [envelope], generate_key())
    flipped = bytes([envelope.payload[0] ^ 1]) + envelope.payload[1:]
    with pytest.raises(AuthenticationError):
        codec.decrypt(models, [dataclasses.replace(envelope, payload=flipped)], key)


def test_mask_settings_travel_in_the_authenticated_header(models, fixed_randomness):
    key = generate_key()
    envelope, = codec.encrypt(models, ["AB"], key, get_scheme("keyed-gaussian", gaussian_sigma=9.0))
    assert envelope.models[codec.SIGMA_KEY] == "9.0"
    assert codec.scheme_for(envelope, 8).sigma == 9.0
    tampered = dataclasses.replace(envelope, models={**envelope.models, codec.SIGMA_KEY: "1.0"})
    with pytest.raises(AuthenticationError):
        codec.decrypt(models, [tampered], key)


def test_other_model_versions_are_refused(models):
    key = generate_key()
    envelope, = codec.encrypt(models, ["AB"], key, get_scheme("keyed-modular"))
    other = dataclasses.replace(models, versions={**models.versions, "crypson-vae": "7"})
    with pytest.raises(codec.ModelMismatchError, match="crypson-vae"):
        codec.decrypt(other, [envelope], key)


def test_alphabet_folds_merged_cases_and_refuses_the_rest():
    alphabet = Alphabet(CLASSES)
    encoded = alphabet.encode("Hello World 42")
    assert alphabet.decode(encoded.class_index, encoded.is_space) == "HeLLO WOrLd 42"
    assert encoded.is_space.tolist() == [c == " " for c in "Hello World 42"]
    with pytest.raises(AlphabetError, match=r"unsupported characters '!€'.*0123456789ABC"):
        alphabet.encode("Hi!€")
    replaced = alphabet.encode("Hi!", replace="X")
    assert alphabet.decode(replaced.class_index, replaced.is_space) == "HIX"
    with pytest.raises(AlphabetError, match="replacement"):
        alphabet.encode("Hi!", replace="!")
    letters = Alphabet(tuple("ABCDEFGHIJKLMNOPQRSTUVWXYZ"))
    folded = letters.encode("abc")
    assert letters.decode(folded.class_index, folded.is_space) == "ABC"


class _HashClassifier(torch.nn.Module):
    """A stand-in receiver whose verdict on a latent is effectively a coin flip between two classes."""

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        phase = torch.sin(1000.0 * latents.double().sum(1)).float()
        return torch.stack([phase, -phase], 1)


class _ConstantClassifier(torch.nn.Module):
    """A stand-in receiver that reads every latent as the first class."""

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(len(latents), 2)
        logits[:, 0] = 1.0
        return logits


def _two_letter_models(classifier: torch.nn.Module) -> codec.CipherModels:
    torch.manual_seed(1)
    return codec.CipherModels(Generator(2, 8, 4), VAE(latent_dim=8, channels=(4, 4, 8, 8)), classifier, ("A", "B"))


def test_sender_redraws_until_the_receiver_reads_every_character():
    models, key, scheme = _two_letter_models(_HashClassifier()), generate_key(), get_scheme("keyed-modular")
    texts = ["ABBA BAAB", "BBBBBBBB", "A"]
    checked = codec.decrypt(models, codec.encrypt(models, texts, key, scheme, max_draws=64), key)
    assert [r.text for r in checked] == texts  # a miss per draw is ~1/2: 64 draws leave ~1e-19
    unchecked = codec.decrypt(models, codec.encrypt(models, texts * 4, key, scheme, max_draws=1), key)
    assert [r.text for r in unchecked] != texts * 4  # one draw: about half the 76 letters are misread


def test_misread_characters_are_sent_with_a_warning_that_names_no_text(caplog):
    models, key, scheme = _two_letter_models(_ConstantClassifier()), generate_key(), get_scheme("keyed-modular")
    with caplog.at_level("WARNING", logger="crypson.cipher.codec"):
        result, = codec.decrypt(models, codec.encrypt(models, ["AB B"], key, scheme, max_draws=3), key)
    assert result.text == "AA A"  # what this receiver reads; the message still goes out
    warning, = caplog.records
    assert "2 of 3 characters" in warning.getMessage() and "after 3 images" in warning.getMessage()
    assert "AB" not in warning.getMessage()


def _counting_encoder(seed: int) -> tuple:
    """encode(index) -> fresh 2-d Gaussian latents, and the list of batch sizes it was called with."""
    stream, calls = torch.Generator().manual_seed(seed), []

    def encode(index):
        calls.append(len(index))
        return torch.randn(len(index), 2, generator=stream)

    return encode, calls


def test_draw_until_read_redraws_only_the_misread_in_batches():
    encode, calls = _counting_encoder(0)

    def classify(latents):  # class 1 when the first component is positive; class 2 never
        return (latents[:, 0] > 0).long()

    index = torch.tensor([0, 1] * 50 + [2] * 3)
    drawn = codec.draw_until_read(encode, classify, index, max_draws=40, min_batch=1)
    readable = index < 2
    assert torch.equal(classify(drawn.latents)[readable], index[readable])
    assert drawn.read_back.tolist() == readable.tolist()
    assert drawn.draws[~readable].tolist() == [40, 40, 40]
    assert 1 <= int(drawn.draws[readable].min()) and float(drawn.draws[readable].float().mean()) < 4
    assert calls[0] == len(index) and calls == sorted(calls, reverse=True) and len(calls) == 40
    assert calls[-1] == 3  # the last rounds draw only the unreadable characters


def test_one_draw_is_the_networks_raw_path():
    first = torch.randn(5, 2)
    drawn = codec.draw_until_read(lambda index: first.clone(), lambda latents: torch.zeros(len(latents), dtype=torch.long),
                                  torch.tensor([0, 1, 0, 1, 1]), max_draws=1)
    assert torch.equal(drawn.latents, first) and drawn.draws.tolist() == [1] * 5
    assert drawn.read_back.tolist() == [True, False, True, False, False]


@pytest.mark.parametrize("bad", [0, -3, True, 2.5, None])
def test_max_draws_must_be_a_positive_int(bad):
    with pytest.raises(ValueError, match=f"max_draws must be an int >= 1, got {bad!r}"):
        codec.draw_until_read(lambda index: torch.zeros(len(index), 2), lambda z: torch.zeros(len(z)),
                              torch.tensor([0]), max_draws=bad)


def test_the_last_few_characters_get_several_candidates_per_round():
    encode, calls = _counting_encoder(1)

    def classify(latents):  # class 0 reads back one time in ten, class 1 never
        return torch.where(latents[:, 0] > 1.2816, 0, 5)

    index = torch.tensor([0] * 20 + [1] * 2)
    drawn = codec.draw_until_read(encode, classify, index, max_draws=50, min_batch=64)
    assert drawn.read_back.tolist() == [True] * 20 + [False] * 2
    assert torch.equal(classify(drawn.latents)[:20], index[:20])
    assert drawn.draws[20:].tolist() == [50, 50] and int(drawn.draws[:20].max()) <= 50
    assert sum(calls) <= 22 * 50 and len(calls) < 12  # a round per draw would be 50 calls
    # every round but the first and the last (capped by the draws left) fills at least 64 - 21 images
    assert all(size >= 64 - 21 for size in calls[1:-1]), calls


def test_chunked_forward_passes_give_the_same_answers(models):
    from crypson.inference import inference_chunk

    assert inference_chunk("cpu") == 128 and inference_chunk(torch.device("cuda", 0)) == 8192
    latents = torch.randn(300, 8)  # three CPU chunks, the last one short
    assert torch.equal(codec.classify_latents(models, latents), codec.classify_latents(models, latents, batch_size=300))
    index = torch.arange(300) % len(CLASSES)
    chunked = codec.encode_characters(models, index, noise_source=torch.Generator().manual_seed(5))
    whole = codec.encode_characters(models, index, batch_size=300, noise_source=torch.Generator().manual_seed(5))
    assert chunked.shape == (300, 8) and torch.allclose(chunked, whole, atol=1e-5)
