"""Mask schemes: how one message's latents are hidden in its payload bytes, and recovered.

Every scheme turns the (N, d) latents of ONE message into N * bytes_per_character bytes and back.
Keyed schemes draw their mask from the message's keyed stream `prf_stream(mask_key, length)`
(ChaCha20, RFC 8439, keyed by a 32-byte per-message subkey), so masks never repeat across messages.

| scheme           | mask for character i              | payload per component | settings       |
|------------------|-----------------------------------|-----------------------|----------------|
| `report`         | E(t=i), public weights            | float32 (4 bytes)     |                |
| `keyed-timestep` | E(t_i), t_i from the keyed stream | float32 (4 bytes)     |                |
| `keyed-gaussian` | sigma * N(0, I), keyed stream     | float16 (2 bytes)     | gaussian_sigma |
| `keyed-modular`  | uniform uint16 added mod 2^16     | uint16 (2 bytes)      | modular_range  |

E is the report's sinusoidal timestep embedding + MLP with PUBLIC weights (seeded, see
`public_timestep_embedding`). All payload numbers are big-endian.

`MASK_SCHEMES` is the one registry: name -> class, in the order of the envelope's wire ids
(`scheme_ids.SCHEME_IDS`, append-only). Each class says what the rest of the code needs to know of
it: `keyed`, `payload_dtype`, `exact` and `settings`; `get_scheme` builds one by name.
"""

from __future__ import annotations

import abc
import math
import numbers

import numpy as np
import torch

from crypson.cipher.keys import KEY_BYTES, prf_stream
from crypson.models.timestep import SinusoidalTimestepEmbedding

MASK_KEY_BYTES = KEY_BYTES  # the per-message ChaCha20 subkey, 32 bytes (RFC 8439, section 2.3)
PUBLIC_EMBEDDING_SEED = 0  # public on purpose: the report's E has untrained, published weights
EMBEDDING_HIDDEN = 16  # the report's time-embedding MLP width
TIMESTEP_RANGE = 2**20  # keyed-timestep: t_i = uint32 mod 2^20
UINT16_MODULUS = 2**16


def public_timestep_embedding(latent_dim: int = 8, hidden: int = EMBEDDING_HIDDEN) -> SinusoidalTimestepEmbedding:
    """The report's E(t) with deterministic, public weights; the global torch RNG is left untouched.

    Args:
        latent_dim: the latent size d (even: the sinusoidal encoding has sin/cos pairs).
        hidden: the MLP width (16 in the report).
    Returns:
        A frozen `SinusoidalTimestepEmbedding` in eval mode; every construction gives the same weights.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(PUBLIC_EMBEDDING_SEED)
        embedding = SinusoidalTimestepEmbedding(latent_dim, hidden)
    return embedding.eval().requires_grad_(False)


def _keystream_words(mask_key: bytes, count: int, word: str) -> np.ndarray:
    """`count` big-endian unsigned words (">u2" or ">u4") from the message's keyed stream, native order."""
    size = np.dtype(word).itemsize
    if count == 0:
        return np.zeros(0, dtype=np.dtype(word).newbyteorder("="))
    stream = prf_stream(mask_key, count * size)
    return np.frombuffer(stream, dtype=word).astype(np.dtype(word).newbyteorder("="))


def _positive_setting(setting: str, value: object) -> float:
    """`value` as a float when it is a positive finite number; a ValueError naming the setting otherwise."""
    if not (isinstance(value, numbers.Real) and math.isfinite(value) and value > 0):
        raise ValueError(f"{setting} must be a positive finite number, got {value!r}")
    return float(value)


class MaskScheme(abc.ABC):
    """Masks the latents of one message into payload bytes and removes the mask again.

    Subclasses set the class attributes below and implement `_mask` / `_unmask`; the public
    `mask` / `unmask` check their arguments first, for every scheme alike.

    Attributes:
        name: the scheme's name in params.yaml (`cipher.scheme`) and in ciphertexts.
        keyed: the mask comes from the message's keyed stream (False: anyone can remove it).
        payload_dtype: numpy dtype of one payload number, big-endian: ">f4", ">f2" or ">u2".
        exact: `unmask` returns exactly `received(latents)`: the payload numbers are uint16 words of
            the latent quantised to `levels` steps over [-range, range], masked mod 2^16. False: the
            masked value is rounded to a float payload number.
        settings: the keyword arguments it takes besides `latent_dim` (config.cipher settings of the
            same names); `setting_values` gives an instance's, which travel under the envelope's tag.
    """

    name: str
    keyed: bool
    payload_dtype: str
    exact: bool = False
    settings: tuple[str, ...] = ()

    def __init__(self, latent_dim: int) -> None:
        if isinstance(latent_dim, bool) or not isinstance(latent_dim, int) or latent_dim < 1:
            raise ValueError(f"latent_dim must be a positive int, got {latent_dim!r}")
        self.latent_dim = latent_dim
        self.bytes_per_character = np.dtype(self.payload_dtype).itemsize * latent_dim

    def setting_values(self) -> dict[str, float]:
        """This instance's settings, by the names in `settings`."""
        return {}

    def mask(self, latents: torch.Tensor, mask_key: bytes | None) -> bytes:
        """Hide a message's latents.

        Args:
            latents: (N, d) float32 CPU latents of one message, finite.
            mask_key: the message's 32-byte mask subkey (ignored by unkeyed schemes; may be None there).
        Returns:
            N * bytes_per_character payload bytes.
        """
        self._check_latents(latents)
        self._check_key(mask_key)
        with torch.no_grad():
            return self._mask(latents.detach(), mask_key)

    def unmask(self, payload: bytes, count: int, mask_key: bytes | None) -> torch.Tensor:
        """Remove the mask from a payload.

        Args:
            payload: count * bytes_per_character bytes made by `mask`.
            count: the number of characters N.
            mask_key: the same subkey the sender used.
        Returns:
            (N, d) float32 latents (a wrong key gives unrelated values: the tag must be checked first).
        """
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ValueError(f"count must be a non-negative int, got {count!r}")
        if not isinstance(payload, (bytes, bytearray, memoryview)):
            raise ValueError(f"payload must be bytes, got {type(payload).__name__}")
        if len(payload) != count * self.bytes_per_character:
            expected = count * self.bytes_per_character
            raise ValueError(f"{self.name} payload has {len(payload)} bytes, expected {expected}"
                             f" = {count} characters x {self.bytes_per_character} bytes")
        self._check_key(mask_key)
        with torch.no_grad():
            return self._unmask(bytes(payload), count, mask_key)

    def received(self, latents: torch.Tensor) -> torch.Tensor:
        """What the receiver gets back for these latents over a clean channel, as far as it does
        not depend on the key: the latents themselves for the float schemes (their payload rounding,
        float32 or float16 of the masked value, is left out), the 16-bit grid for keyed-modular."""
        return latents

    @abc.abstractmethod
    def _mask(self, latents: torch.Tensor, mask_key: bytes | None) -> bytes:
        """Scheme-specific masking of checked latents."""

    @abc.abstractmethod
    def _unmask(self, payload: bytes, count: int, mask_key: bytes | None) -> torch.Tensor:
        """Scheme-specific unmasking of a payload of checked length."""

    def _check_latents(self, latents: torch.Tensor) -> None:
        if not isinstance(latents, torch.Tensor):
            raise ValueError(f"latents must be a torch.Tensor, got {type(latents).__name__}")
        if latents.dtype != torch.float32 or latents.device.type != "cpu":
            raise ValueError(f"latents must be float32 on the CPU, got {latents.dtype} on {latents.device}")
        if latents.ndim != 2 or latents.shape[1] != self.latent_dim:
            raise ValueError(f"latents must have shape (N, {self.latent_dim}), got {tuple(latents.shape)}")
        if not torch.isfinite(latents).all():
            raise ValueError("latents contain NaN or infinite values")

    def _check_key(self, mask_key: bytes | None) -> None:
        if not self.keyed:
            return  # public scheme: any key is ignored
        if isinstance(mask_key, (bytes, bytearray)) and len(mask_key) == MASK_KEY_BYTES:
            return
        if isinstance(mask_key, (bytes, bytearray)):
            got = f"{len(mask_key)} bytes"
        else:
            got = "None" if mask_key is None else type(mask_key).__name__
        raise ValueError(f"scheme {self.name!r} needs a {MASK_KEY_BYTES}-byte mask_key, got {got}")


class _TimestepMask(MaskScheme):
    """masked = latent + E(t_i) with the public embedding E; the payload is big-endian float32."""

    payload_dtype = ">f4"

    def __init__(self, latent_dim: int) -> None:
        super().__init__(latent_dim)
        if latent_dim % 2:
            raise ValueError(f"scheme {self.name!r} needs an even latent_dim (sin/cos pairs), got {latent_dim}")
        self.embedding = public_timestep_embedding(latent_dim)

    def position_embedding(self, timesteps: torch.Tensor) -> torch.Tensor:
        """The public mask E(t): (N,) integer or real timesteps -> (N, d) float32. Anyone can compute it."""
        with torch.no_grad():
            return self.embedding(timesteps.cpu()).float()

    @abc.abstractmethod
    def timesteps(self, count: int, mask_key: bytes | None) -> torch.Tensor:
        """(count,) int64 timesteps t_i of a message's characters."""

    def _mask(self, latents: torch.Tensor, mask_key: bytes | None) -> bytes:
        masked = latents + self.position_embedding(self.timesteps(len(latents), mask_key))  # (N, d)
        return masked.numpy().astype(self.payload_dtype).tobytes()

    def _unmask(self, payload: bytes, count: int, mask_key: bytes | None) -> torch.Tensor:
        masked = np.frombuffer(payload, dtype=self.payload_dtype).astype(np.float32).reshape(count, self.latent_dim)
        return torch.from_numpy(masked) - self.position_embedding(self.timesteps(count, mask_key))


class ReportMask(_TimestepMask):
    """The Crypson report's scheme exactly: mask_i = E(t=i), t = 0, 1, 2, ... the position.

    NOT a cipher. E's weights are public and t is a counter, so anyone with the code removes the
    mask (no key is used; a given key is ignored) and identical positions get identical masks in
    every message. Kept, by name, as the baseline the attack suite shows to be broken.
    """

    name = "report"
    keyed = False

    def timesteps(self, count: int, mask_key: bytes | None = None) -> torch.Tensor:
        """t_i = i, as in the report."""
        return torch.arange(count, dtype=torch.int64)


class KeyedTimestepMask(_TimestepMask):
    """mask_i = E(t_i) with secret timesteps t_i = uint32 from the keyed stream mod 2^20.

    A finite range because E is evaluated at real-valued t: below 2^24 every integer t is exact in
    float32, and 2^20 already exceeds the longest sinusoid period (2*pi*10^4, Vaswani et al. 2017),
    so a larger range adds no new masks, only float32 phase error. Whatever the range, the masks lie
    on a public 1-d curve {E(t)} in R^d and the 2^20 candidates can be enumerated: the attack suite
    shows this scheme to be weak. It hides only which point of the curve was added.
    """

    name = "keyed-timestep"
    keyed = True

    def timesteps(self, count: int, mask_key: bytes | None) -> torch.Tensor:
        """t_i from 4 keystream bytes per character (big-endian uint32) mod 2^20."""
        words = _keystream_words(mask_key, count, ">u4")  # (N,) uint32
        return torch.from_numpy((words % TIMESTEP_RANGE).astype(np.int64))


class KeyedGaussianMask(MaskScheme):
    """masked = latent + sigma * N(0, I), the noise drawn from the keyed stream; float16 payload.

    Uniforms u = (w + 0.5) / 2^32 from big-endian uint32 words w (4 keystream bytes per component)
    go through the inverse normal CDF in float64. Not a one-time pad: by the Gaussian-channel bound
    (Cover & Thomas, Elements of Information Theory, Thm 9.1.1) a ciphertext leaks at most
    0.5 * d * log2(1 + var_z / sigma^2) bits per character about the latent. In exchange it
    tolerates channel noise. The float16 payload rounds each masked value to half its fp16 spacing:
    at |value| in [16, 32) (4 sigma for sigma = 4) that is 2^-7 ~ 0.0078, see `rounding_error_bound`.
    """

    name = "keyed-gaussian"
    keyed = True
    payload_dtype = ">f2"
    settings = ("gaussian_sigma",)

    def __init__(self, latent_dim: int, gaussian_sigma: float = 4.0) -> None:
        super().__init__(latent_dim)
        self.sigma = _positive_setting("gaussian_sigma", gaussian_sigma)

    def setting_values(self) -> dict[str, float]:
        return {"gaussian_sigma": self.sigma}

    def gaussian_mask(self, count: int, mask_key: bytes) -> torch.Tensor:
        """The (count, d) float64 mask sigma * N(0, I) of one message."""
        words = _keystream_words(mask_key, count * self.latent_dim, ">u4")  # (N * d,) uint32
        uniform = (torch.from_numpy(words.astype(np.float64)) + 0.5) / 2.0**32  # in (0, 1), never 0 or 1
        return self.sigma * torch.special.ndtri(uniform).reshape(count, self.latent_dim)

    def information_bound_bits(self, latent_variance: float) -> float:
        """Upper bound on what one ciphertext character reveals: 0.5 * d * log2(1 + var_z / sigma^2) bits."""
        if not (math.isfinite(latent_variance) and latent_variance >= 0):
            raise ValueError(f"latent_variance must be finite and >= 0, got {latent_variance!r}")
        return 0.5 * self.latent_dim * math.log2(1.0 + latent_variance / self.sigma**2)

    @staticmethod
    def rounding_error_bound(magnitude: float) -> float:
        """Largest float16 rounding error of a masked value of this magnitude: half its fp16 spacing."""
        return float(np.spacing(np.float16(abs(magnitude)))) / 2.0

    def _mask(self, latents: torch.Tensor, mask_key: bytes | None) -> bytes:
        masked = (latents.double() + self.gaussian_mask(len(latents), mask_key)).numpy()  # (N, d)
        payload = masked.astype(self.payload_dtype)  # numpy rounds float64 -> float16 to nearest
        if not np.isfinite(payload).all():
            raise ValueError(f"masked values exceed the float16 range; gaussian_sigma={self.sigma} is too large")
        return payload.tobytes()

    def _unmask(self, payload: bytes, count: int, mask_key: bytes | None) -> torch.Tensor:
        masked = np.frombuffer(payload, dtype=self.payload_dtype).astype(np.float64).reshape(count, self.latent_dim)
        return (torch.from_numpy(masked) - self.gaussian_mask(count, mask_key)).float()


class KeyedModularMask(MaskScheme):
    """A one-time pad under the PRF: c = (q + m) mod 2^16, q the 16-bit quantised latent.

    q = round((clip(z, -R, R) + R) / (2R) * 65535); values beyond +-R are CLIPPED (R = modular_range,
    default 6: a N(0, 1) component is beyond it with probability 2e-9). The quantisation step is
    2R / 65535 (~1.8e-4 for R = 6). m is a big-endian uint16 from the keyed stream (2 bytes per
    component), so c is uniform whatever z is. Not noise tolerant: a flipped bit wraps around.
    """

    name = "keyed-modular"
    keyed = True
    payload_dtype = ">u2"
    exact = True
    settings = ("modular_range",)
    levels = UINT16_MODULUS - 1  # 65535 steps over [-R, R]

    def __init__(self, latent_dim: int, modular_range: float = 6.0) -> None:
        super().__init__(latent_dim)
        self.range = _positive_setting("modular_range", modular_range)

    def setting_values(self) -> dict[str, float]:
        return {"modular_range": self.range}

    def quantise(self, latents: torch.Tensor) -> torch.Tensor:
        """(N, d) float latents -> (N, d) int32 levels in [0, 65535], clipping to [-R, R] first."""
        clipped = latents.double().clamp(-self.range, self.range)
        return torch.round((clipped + self.range) / (2 * self.range) * self.levels).to(torch.int32)

    def dequantise(self, quantised: torch.Tensor) -> torch.Tensor:
        """(N, d) integer levels in [0, 65535] -> (N, d) float32 latents q / 65535 * 2R - R."""
        out_of_range = quantised.numel() > 0 and bool(quantised.min() < 0 or quantised.max() > self.levels)
        if quantised.is_floating_point() or out_of_range:
            raise ValueError(f"quantised latents must be integers in [0, {self.levels}]")
        return (quantised.double() / self.levels * 2 * self.range - self.range).float()

    def received(self, latents: torch.Tensor) -> torch.Tensor:
        """Exactly what `unmask` returns: the latents clipped and rounded to the 16-bit grid."""
        return self.dequantise(self.quantise(latents.cpu())).to(latents.device)

    def _mask(self, latents: torch.Tensor, mask_key: bytes | None) -> bytes:
        quantised = self.quantise(latents).numpy().astype(np.uint32).reshape(-1)  # (N * d,)
        pad = _keystream_words(mask_key, quantised.size, ">u2").astype(np.uint32)
        return ((quantised + pad) % UINT16_MODULUS).astype(self.payload_dtype).tobytes()

    def _unmask(self, payload: bytes, count: int, mask_key: bytes | None) -> torch.Tensor:
        cipher_words = np.frombuffer(payload, dtype=self.payload_dtype).astype(np.int64)  # (N * d,)
        pad = _keystream_words(mask_key, cipher_words.size, ">u2").astype(np.int64)
        quantised = (cipher_words - pad) % UINT16_MODULUS  # numpy's % is non-negative for a positive modulus
        return self.dequantise(torch.from_numpy(quantised.reshape(count, self.latent_dim)))


# The registry, in the order of the envelope's wire ids (a test keeps the two equal).
MASK_SCHEMES: dict[str, type[MaskScheme]] = {
    scheme.name: scheme for scheme in (ReportMask, KeyedTimestepMask, KeyedGaussianMask, KeyedModularMask)
}
SCHEMES = tuple(MASK_SCHEMES)
MASK_SETTINGS = tuple(dict.fromkeys(setting for scheme in MASK_SCHEMES.values() for setting in scheme.settings))


def get_scheme(name: str, latent_dim: int = 8, **settings: float) -> MaskScheme:
    """A mask scheme by name.

    Args:
        name: one of SCHEMES.
        latent_dim: the latent size d.
        settings: values of MASK_SETTINGS (config.cipher's); each scheme takes its own and leaves the
            others, so one set of settings builds any scheme. Missing: the scheme's default.
    Returns:
        A fresh MaskScheme.
    """
    if name not in MASK_SCHEMES:
        raise ValueError(f"unknown mask scheme {name!r}; choose one of {', '.join(SCHEMES)}")
    unknown = sorted(set(settings) - set(MASK_SETTINGS))
    if unknown:
        raise ValueError(f"unknown mask setting(s) {', '.join(unknown)}; allowed: {', '.join(MASK_SETTINGS)}")
    scheme = MASK_SCHEMES[name]
    return scheme(latent_dim, **{setting: settings[setting] for setting in scheme.settings if setting in settings})
