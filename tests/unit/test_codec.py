"""The codec's plumbing on small untrained models: ordering, spaces, tags, scheme settings, and the
sender's constant-work check.

Untrained networks do not recover the right characters (so these tests allow misreads where they
do not test them); what is checked is that the receiver gets exactly the sender's latents back (up
to the scheme's quantisation) and classifies them as the sender's models would, for every message
of a batch.
"""

import dataclasses

import numpy as np
import pytest
import torch

from crypson.cipher import codec
from crypson.cipher.alphabet import Alphabet, AlphabetError
from crypson.cipher.envelope import AuthenticationError, StreamError
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
    results = codec.decrypt(models, codec.encrypt(models, texts, key, scheme, candidates=1, allow_misread=True), key)
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
    result, = codec.decrypt(models, codec.encrypt(models, ["HELLO 42"], key, get_scheme(name), candidates=1,
                                                 allow_misread=True), key)
    tolerance = 0.01 if name == "keyed-gaussian" else 1e-5  # fp16 payload for the Gaussian mask
    assert torch.allclose(result.latents, sent, atol=tolerance)


def test_each_encryption_is_fresh(models):
    key, scheme = generate_key(), get_scheme("keyed-modular")
    first, second = codec.encrypt(models, ["SAME", "SAME"], key, scheme, allow_misread=True)
    assert first.nonce != second.nonce and first.payload != second.payload


def test_wrong_key_and_tampering_give_no_plaintext(models):
    key, scheme = generate_key(), get_scheme("keyed-modular")
    envelope, = codec.encrypt(models, ["SECRET"], key, scheme, allow_misread=True)
    with pytest.raises(AuthenticationError):
        codec.decrypt(models, [envelope], generate_key())
    flipped = bytes([envelope.payload[0] ^ 1]) + envelope.payload[1:]
    with pytest.raises(AuthenticationError):
        codec.decrypt(models, [dataclasses.replace(envelope, payload=flipped)], key)


def test_mask_settings_travel_in_the_authenticated_header(models, fixed_randomness):
    key = generate_key()
    envelope, = codec.encrypt(models, ["AB"], key, get_scheme("keyed-gaussian", gaussian_sigma=9.0),
                              allow_misread=True)
    assert envelope.models["mask.gaussian_sigma"] == "9.0" and "mask.modular_range" not in envelope.models
    assert codec.scheme_for(envelope, 8).sigma == 9.0
    tampered = dataclasses.replace(envelope, models={**envelope.models, "mask.gaussian_sigma": "1.0"})
    with pytest.raises(AuthenticationError):
        codec.decrypt(models, [tampered], key)


def test_the_lines_of_one_encryption_are_one_stream(models):
    key, scheme = generate_key(), get_scheme("keyed-modular")
    lines = codec.encrypt(models, ["ONE", "TWO", "THREE"], key, scheme, allow_misread=True)
    assert len({e.stream for e in lines}) == 1 and [e.part for e in lines] == [0, 1, 2]
    assert [e.final for e in lines] == [False, False, True]
    assert len(codec.decrypt(models, lines, key)) == 3
    for edited, message in (([lines[0], lines[2]], "line 2 is part 3"), ([lines[1], lines[0], lines[2]], "line 1"),
                            (lines[:2], "without its final part"), (lines + lines[2:], "1 more follow")):
        with pytest.raises(StreamError, match=message):
            codec.decrypt(models, edited, key)
    with pytest.raises(StreamError, match="line 1 is part 2"):  # a part alone is not a message
        codec.decrypt(models, [lines[1]], key, one_stream=False)


def test_independent_rows_decrypt_alone_in_any_order(models):
    key, scheme = generate_key(), get_scheme("keyed-modular")
    rows = codec.encrypt(models, ["ONE", "TWO"], key, scheme, allow_misread=True, one_stream=False)
    assert rows[0].stream != rows[1].stream and all(e.part == 0 and e.final for e in rows)
    assert [len(d.text) for d in codec.decrypt(models, rows[::-1], key, one_stream=False)] == [3, 3]
    with pytest.raises(StreamError, match="line 1 is the stream.s last part"):  # rows are not one stream
        codec.decrypt(models, rows, key)


def test_other_model_versions_are_refused(models):
    key = generate_key()
    envelope, = codec.encrypt(models, ["AB"], key, get_scheme("keyed-modular"), allow_misread=True)
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


def test_sender_sends_a_candidate_the_receiver_reads_for_every_character():
    models, key, scheme = _two_letter_models(_HashClassifier()), generate_key(), get_scheme("keyed-modular")
    texts = ["ABBA BAAB", "BBBBBBBB", "A"]
    checked = codec.decrypt(models, codec.encrypt(models, texts, key, scheme, candidates=48), key)
    assert [r.text for r in checked] == texts  # a miss per image is ~1/2: 48 candidates leave ~4e-15
    refused = r"^\d+ characters would be misread by the receiver's classifier \(1 candidate image each\)"
    with pytest.raises(codec.MisreadError, match=refused):
        codec.encrypt(models, texts * 4, key, scheme, candidates=1)  # one image: about half the letters are misread


def test_misread_is_refused_naming_the_count_only_unless_allowed(caplog):
    models, key, scheme = _two_letter_models(_ConstantClassifier()), generate_key(), get_scheme("keyed-modular")
    with pytest.raises(codec.MisreadError) as refused:
        codec.encrypt(models, ["ABBA B"], key, scheme, candidates=3)
    # "3 characters", not "3 of 5": the number of letters would give away the number of spaces.
    assert str(refused.value).startswith("3 characters would be misread by the receiver's classifier (3 "
                                         "candidate images each); nothing was sent")
    assert "ABBA" not in str(refused.value) and "B B" not in str(refused.value)
    with caplog.at_level("WARNING", logger="crypson.cipher.codec"):
        result, = codec.decrypt(models, codec.encrypt(models, ["ABBA B"], key, scheme, candidates=3,
                                                      allow_misread=True), key)
    assert result.text == "AAAA A"  # what this receiver reads; the message goes out
    warning, = caplog.records
    assert warning.getMessage().startswith("3 characters would be misread")
    assert "ABBA" not in warning.getMessage() and "B B" not in warning.getMessage()


def test_the_chosen_candidate_is_the_correct_one_with_the_largest_margin():
    # two characters (classes 1 and 2), three candidates each, three classes; rows are character-major
    logits = torch.tensor([[2.0, 1.0, 0.0],   # char 0: margin 1 - 2 = -1 (misread)
                           [0.0, 3.0, 1.0],   #         margin 3 - 1 = 2 (read, the largest)
                           [0.0, 5.0, 4.5],   #         margin 0.5 (read)
                           [1.0, 0.0, 0.0],   # char 1: margin -1
                           [0.0, 2.0, 1.0],   #         margin -1
                           [3.0, 0.0, 1.0]])  #         margin -2: no candidate is read correctly
    latents = torch.arange(12.0).view(6, 2)
    checked = codec.best_candidates(latents, logits, torch.tensor([1, 2]), 3)
    assert checked.margin.tolist() == [2.0, -1.0]
    assert checked.read_back.tolist() == [True, False]
    assert checked.candidate_read.tolist() == [[False, True, True], [False, False, False]]
    assert torch.equal(checked.latents, latents[[1, 3]])  # char 1: the first of its equal best margins


class _FirstTwoClassifier(torch.nn.Module):
    """A stand-in receiver whose logits are the latent's first two numbers: known for any latent."""

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return latents[:, :2]


def test_draw_candidates_keeps_each_characters_best_candidate_in_order():
    models = _two_letter_models(_FirstTwoClassifier())
    index = torch.tensor([0, 1, 1, 0, 1])
    checked = codec.draw_candidates(models, index, 4, noise_source=torch.Generator().manual_seed(3))
    candidates = codec.encode_characters(models, index.repeat_interleave(4),
                                         noise_source=torch.Generator().manual_seed(3)).view(5, 4, 8)
    margin = (candidates[..., 0] - candidates[..., 1]) * torch.where(index == 0, 1.0, -1.0)[:, None]  # (5, 4)
    assert torch.allclose(checked.margin, margin.amax(1))
    assert torch.equal(checked.candidate_read, margin > 0)
    assert torch.equal(checked.latents, candidates[torch.arange(5), margin.argmax(1)])


def _count_network_calls(models: codec.CipherModels) -> list[tuple[str, int]]:
    """Record (network, batch size) for every call of the generator, the VAE encoder and the classifier."""
    calls: list[tuple[str, int]] = []
    for name, module in (("generator", models.generator), ("vae", models.vae.encoder),
                         ("classifier", models.classifier)):
        module.register_forward_hook(lambda module, inputs, output, name=name: calls.append((name, len(inputs[0]))))
    return calls


def test_the_sender_does_the_same_work_for_any_text_of_a_given_length():
    torch.manual_seed(2)
    vae = VAE(latent_dim=8, channels=(4, 4, 8, 8))
    classifier = LatentClassifier(vae.decoder, len(CLASSES), 16, 0.0)
    models = codec.CipherModels(Generator(len(CLASSES), 8, 4), vae, classifier, CLASSES)
    calls = _count_network_calls(models)
    key, scheme, length = generate_key(), get_scheme("keyed-modular"), 150
    mixed = "".join(CLASSES[i % len(CLASSES)] for i in range(length - 10)) + " " * 10
    seen = []
    for text in ("A" * length, "W" * length, "7" * length, mixed):
        calls.clear()
        codec.encrypt(models, [text], key, scheme, candidates=3, allow_misread=True)
        seen.append(list(calls))
    # 150 characters x 3 candidates = 450 inputs, in CPU chunks of 128 (crypson.inference)
    expected = [size for start in range(0, 450, 128) for size in [min(128, 450 - start)] * 2]
    assert [size for name, size in seen[0] if name != "classifier"] == expected
    assert [size for name, size in seen[0] if name == "classifier"] == [128, 128, 128, 66]
    assert all(run == seen[0] for run in seen[1:])


@pytest.mark.parametrize("bad", [0, -3, True, 2.5, None, "4"])
def test_candidates_must_be_a_positive_int(models, bad):
    with pytest.raises(ValueError, match=f"candidates must be an int >= 1, got {bad!r}"):
        codec.encrypt(models, ["AB"], generate_key(), get_scheme("keyed-modular"), candidates=bad)
    with pytest.raises(ValueError, match=f"candidates must be an int >= 1, got {bad!r}"):
        codec.draw_candidates(models, torch.tensor([0]), bad)


def test_chunked_forward_passes_give_the_same_answers(models):
    from crypson.inference import inference_chunk

    assert inference_chunk("cpu") == 128 and inference_chunk(torch.device("cuda", 0)) == 8192
    latents = torch.randn(300, 8)  # three CPU chunks, the last one short
    assert torch.equal(codec.classify_latents(models, latents), codec.classify_latents(models, latents, batch_size=300))
    index = torch.arange(300) % len(CLASSES)
    chunked = codec.encode_characters(models, index, noise_source=torch.Generator().manual_seed(5))
    whole = codec.encode_characters(models, index, batch_size=300, noise_source=torch.Generator().manual_seed(5))
    assert chunked.shape == (300, 8) and torch.allclose(chunked, whole, atol=1e-5)


def test_known_answer_for_a_whole_message(models, monkeypatch):
    """Fixed key, nonces and latents; every subkey, keystream and byte recomputed here independently
    (cryptography's HKDF, ChaCha20 and HMAC, struct for the layout), so a swapped subkey, flags sent in
    the clear or under the mask's keystream, or a tag under the wrong key all fail this test."""
    import hashlib
    import hmac as std_hmac
    import json
    import struct

    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    from crypson.cipher.envelope import to_bytes
    from crypson.cipher.keys import SecretKey

    key = SecretKey(bytes(range(32)))
    stream_id, nonce = bytes([7] * 16), bytes(range(100, 116))
    nonces = iter([stream_id, nonce])
    monkeypatch.setattr(codec, "new_nonce", lambda: next(nonces))
    latents = torch.tensor([[0.5, -1.25, 2.0, 0.0, 7.5, -6.5, 0.001, 3.3]] * 3) * torch.tensor([[1.0], [-1.0], [0.5]])
    monkeypatch.setattr(codec, "draw_candidates", lambda m, index, k, received=None: codec.Checked(
        latents, torch.ones(3), torch.ones(3, k, dtype=torch.bool)))
    envelope, = codec.encrypt(models, ["A C"], key, get_scheme("keyed-modular"), candidates=4)

    okm = HKDF(hashes.SHA256(), 96, salt=nonce, info=b"crypson/v1/message-keys").derive(bytes(range(32)))
    mask_key, mac_key, flags_key = okm[:32], okm[32:64], okm[64:]

    def keystream(subkey: bytes, length: int) -> bytes:
        return Cipher(algorithms.ChaCha20(subkey, bytes(16)), mode=None).encryptor().update(bytes(length))

    levels = [round((min(max(float(z), -6.0), 6.0) + 6.0) / 12.0 * 65535) for z in latents.double().flatten()]
    pad = struct.unpack(">24H", keystream(mask_key, 48))
    payload = struct.pack(">24H", *[(q + m) % 65536 for q, m in zip(levels, pad)])
    flags = bytes([0b01000000 ^ keystream(flags_key, 1)[0]])  # "A C": the second character is a space
    context = {**models.versions, "mask.modular_range": "6.0"}  # the mask's setting travels under the tag
    models_json = json.dumps(context, sort_keys=True, separators=(",", ":")).encode()
    body = (b"CRYP" + bytes([2, 3]) + nonce + stream_id + struct.pack(">IBIH", 0, 1, 3, len(models_json))
            + models_json + flags + struct.pack(">I", len(payload)) + payload)
    tag = std_hmac.new(mac_key, body, hashlib.sha256).digest()
    assert envelope.payload == payload and envelope.flags == flags and envelope.tag == tag
    assert to_bytes(envelope) == body + tag
    # Under any other subkey the tag, the flags or the payload would differ.
    for other in (mask_key, flags_key):
        assert std_hmac.new(other, body, hashlib.sha256).digest() != tag
    assert bytes([0b01000000 ^ keystream(mask_key, 1)[0]]) != flags and keystream(flags_key, 48) != pad
    assert codec.decrypt(models, [envelope], key)[0].is_space.tolist() == [False, True, False]
