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
    results = codec.decrypt(models, codec.encrypt(models, texts, key, scheme), key)
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
    result, = codec.decrypt(models, codec.encrypt(models, ["HELLO 42"], key, get_scheme(name)), key)
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
