"""params.yaml -> one validated, immutable config object.

Every setting of every stage lives in params.yaml (one section per stage, as in DVC's
example-get-started). This module turns it into typed objects; library code receives plain
arguments from them and never reads files or environment variables for its settings.

The defaults below equal params.yaml's values (tests/unit/test_config.py holds them equal), so a
key deleted from params.yaml, or `Config()` where no params file exists (the cipher CLI outside a
checkout), gives the default pipeline's setting, never an older or the report's one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from crypson.cipher.scheme_ids import SCHEME_IDS

SPLITS = ("balanced", "bymerge", "byclass", "letters", "digits", "mnist")


class ConfigError(ValueError):
    """A params file that cannot be used; the message names the key and the allowed values."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GlyphsConfig(_Section):
    train_per_class: int = Field(300, ge=2, le=100_000)
    test_per_class: int = Field(60, ge=1, le=100_000)
    style: Literal["print", "handwriting"] = "print"  # font set: matplotlib's DejaVu | Debian's handwriting fonts
    fonts: tuple[str, ...] = ()  # () = the style's fonts
    centring: Literal["bbox", "mass"] = "bbox"  # bbox: EMNIST (Cohen et al. 2017); mass: MNIST (LeCun et al.)
    max_rotation_deg: float = Field(12.0, ge=0, le=45)
    max_shear: float = Field(0.25, ge=0, le=1)
    scale_range: tuple[float, float] = (0.8, 1.0)
    max_translate_px: float = Field(0.0, ge=0, le=6)
    stroke_width_max: int = Field(2, ge=0, le=6)
    blur_sigma_max: float = Field(1.0, ge=0, le=3)
    noise_std: float = Field(0.0, ge=0, le=0.5)
    elastic_alpha: float = Field(34.0, ge=0, le=100)  # style handwriting: Simard et al. 2003's alpha
    elastic_sigma: float = Field(4.0, ge=0.5, le=10)  # style handwriting: Simard et al. 2003's sigma

    @model_validator(mode="after")
    def _bbox_keeps_the_border(self) -> "GlyphsConfig":
        if self.centring == "bbox" and self.scale_range[1] > 1.0:
            raise ValueError(f"data.glyphs.scale_range={list(self.scale_range)}: with centring: bbox the high end "
                             "must be <= 1.0 to keep EMNIST's 2 px border")
        return self


class DataConfig(_Section):
    source: Literal["glyphs", "emnist"] = "glyphs"
    split: Literal[SPLITS] = "balanced"  # type: ignore[valid-type]
    emnist_dir: str = "data/emnist"
    emnist_download: bool = False
    glyphs: GlyphsConfig = GlyphsConfig()


class PrepareConfig(_Section):
    val_fraction: float = Field(0.1, gt=0, lt=0.5)
    image_size: Literal[32] = 32


class ValidateConfig(_Section):
    min_class_fraction: float = Field(0.5, gt=0, le=1)
    max_class_fraction: float = Field(2.0, ge=1)
    pixel_mean_range: tuple[float, float] = (0.02, 0.6)
    min_pixel_std: float = Field(0.02, ge=0, lt=0.5)


class _TrainConfig(_Section):
    epochs: int = Field(10, ge=1, le=10_000)
    batch_size: int = Field(128, ge=1, le=65_536)
    lr: float = Field(2e-4, gt=0, le=1)
    betas: tuple[float, float] = (0.5, 0.999)
    max_train_batches: int | None = Field(None, ge=1)  # fast path for tests: cap batches per epoch


class CganConfig(_TrainConfig):
    epochs: int = Field(14, ge=1, le=10_000)
    lr: float = Field(8e-4, gt=0, le=1)
    noise_dim: int = Field(64, ge=1)
    generator_width: int = Field(24, ge=1)
    conditioning: Literal["multiply", "concat"] = "concat"
    label_dim: int = Field(16, ge=1)  # label embedding length for conditioning: concat
    discriminator: Literal["mlp", "conv"] = "conv"  # mlp: the report's; conv: SN + projection + class head
    discriminator_hidden: tuple[int, ...] = (2048, 2048, 1024, 512)  # mlp
    discriminator_embed_dim: int = Field(1024, ge=1)  # mlp
    discriminator_width: int = Field(16, ge=1)  # conv: channels w, 2w, 4w, 8w
    class_temperature: float = Field(0.5, gt=0, le=10)  # conv: temperature of the normalised class head
    loss: Literal["bce", "hinge"] = "hinge"
    aux_weight: float = Field(1.0, ge=0, le=100)  # conv: weight of the class head's cross-entropy (AC-GAN)
    class_margin: float | None = Field(0.9, gt=0, lt=1)  # conv: cosine margin of that cross-entropy; null = plain
    mode_seeking: float = Field(0.2, ge=0, le=100)  # weight of MSGAN's mode-seeking term on G; 0 = none
    ema_decay: float | None = Field(0.995, ge=0, lt=1)  # EMA of G's weights, saved and sampled; null = none
    truncation: float | None = Field(2.0, gt=0, le=10)  # sample noise from N(0, 1) cut at +-t; null = none
    samples_per_class: int = Field(4, ge=1, le=64)

    @model_validator(mode="after")
    def _class_head_needs_conv(self) -> "CganConfig":
        if self.aux_weight > 0 and self.discriminator != "conv":
            raise ValueError(f"cgan.aux_weight={self.aux_weight} needs cgan.discriminator: conv (the mlp "
                             "discriminator has no class head), got discriminator: mlp")
        return self


class VaeConfig(_TrainConfig):
    epochs: int = Field(20, ge=1, le=10_000)
    lr: float = Field(1e-3, gt=0, le=1)
    betas: tuple[float, float] = (0.9, 0.999)
    latent_dim: int = Field(8, ge=1)
    channels: tuple[int, int, int, int] = (32, 64, 128, 256)
    recon_weight: float = Field(1.0, gt=0)
    kl_weight: float = Field(0.7, ge=0)
    decoder_output: Literal["report", "direct"] = "direct"  # report: through 1 BN+ReLU channel; direct: ConvT -> sigmoid
    class_weight: float = Field(20.0, ge=0, le=1000)  # cross-entropy of a class head on the latent mean; 0 = none


class ClassifierConfig(_TrainConfig):
    epochs: int = Field(30, ge=1, le=10_000)
    batch_size: int = Field(256, ge=1, le=65_536)
    lr: float = Field(3e-3, gt=0, le=1)
    betas: tuple[float, float] = (0.9, 0.999)
    hidden: int = Field(512, ge=1)
    dropout: float = Field(0.2, ge=0, lt=1)
    generated_fraction: float = Field(0.5, ge=0, lt=1)  # share of training latents from cGAN images
    # fresh cGAN images per class that fit per-class logit offsets for the worst class (Group DRO); 0 = none
    calibration_per_class: int = Field(1500, ge=0, le=100_000)


class EvaluateConfig(_Section):
    generated_per_class: int = Field(50, ge=1, le=10_000)
    batch_size: int = Field(512, ge=1)
    reference_epochs: int = Field(4, ge=1, le=1000)  # the independent judge CNN (class consistency, Frechet distance)
    # class consistency is also reported at these truncation bounds of the cGAN's noise (null = none)
    truncation_levels: tuple[Annotated[float, Field(gt=0, le=10)] | None, ...] = (None, 2.0, 1.0, 0.5)
    grid_per_class: int = Field(8, ge=1, le=64)  # cGAN images per class in the report's sample grid
    tsne_points: int = Field(800, ge=10, le=100_000)  # latents in the t-SNE plot (a seeded subsample)


class AttackConfig(_Section):
    train_per_class: int = Field(50, ge=1, le=100_000)  # cGAN characters per class the attackers learn from
    test_per_class: int = Field(30, ge=1, le=100_000)  # held-out characters per class they are scored on
    message_length: int = Field(16, ge=1, le=4096)  # characters per simulated message (one key and nonce each)
    restarts: int = Field(3, ge=1, le=100)  # fresh initialisations of each learned attacker; the best counts
    epochs: int = Field(20, ge=1, le=10_000)  # training epochs of each learned attacker
    timestep_grid: int = Field(256, ge=1, le=1 << 20)  # candidate timesteps the timestep search tries
    # single cGAN images per class, drawn as the sender draws them, beyond the attackers' characters, that
    # measure the sender's check (each class's single-image read-back and its Wilson bound); 0 = none more
    sender_trials_per_class: int = Field(4000, ge=0, le=1_000_000)
    # channel-noise standard deviations (latent units) for the receiver's accuracy curve
    noise_levels: tuple[Annotated[float, Field(ge=0, le=100)], ...] = Field((0.0, 0.1, 0.25, 0.5, 1.0),
                                                                            min_length=1)


class PromoteConfig(_Section):
    min_accuracy_real: float = Field(0.95, ge=0, le=1)
    min_accuracy_generated: float = Field(0.97, ge=0, le=1)
    min_psnr_db: float = Field(20.0, ge=0)
    max_attacker_advantage: float | None = Field(0.02, ge=0, le=1)  # for cipher.scheme; null = no gate
    min_class_consistency: float | None = Field(0.95, ge=0, le=1)  # cGAN images the judge puts in their class; null = none
    # the sender's misread chance per character at cipher.candidates (the attack stage's bound); null = no gate
    max_sender_misread_chance: float | None = Field(1e-6, ge=0, le=1)


class CipherConfig(_Section):
    # The registered mask schemes (crypson.cipher.masks.MASK_SCHEMES), by the names the envelope gives
    # wire ids: the same list (tested), readable here without importing torch.
    scheme: Literal[SCHEME_IDS] = "keyed-modular"  # type: ignore[valid-type]
    # The schemes' settings (masks.MASK_SETTINGS): each scheme takes its own from `scheme_settings`.
    gaussian_sigma: float = Field(4.0, gt=0, le=1000)
    modular_range: float = Field(6.0, gt=0, le=1000)
    models: str = Field("champion", min_length=1)  # registry alias, or a folder holding models/
    # cGAN images drawn for every character; the sender sends the one its classifier reads back best
    candidates: int = Field(4, ge=1, le=64, strict=True)

    @property
    def scheme_settings(self) -> dict[str, float]:
        """The mask schemes' settings as `masks.get_scheme` takes them."""
        return {"gaussian_sigma": self.gaussian_sigma, "modular_range": self.modular_range}


class TrackingConfig(_Section):
    experiment: str = Field("crypson", min_length=1)
    # Embedded default: a SQLite store in the working folder, no server.
    # The MLFLOW_TRACKING_URI environment variable overrides it (read by the CLI only).
    tracking_uri: str = "sqlite:///mlflow.db"
    artifact_dir: str = "mlartifacts"
    system_metrics: bool = True  # CPU, memory, disk, network (and GPU) of the training runs, every 10 s


class DistributedConfig(_Section):
    """Data-parallel training (crypson.train.distributed): how many processes the training stages run as.

    `nodes` x `gpus_per_node` processes, one GPU each (on CPU, gloo processes). On Kubeflow a product
    above 1 runs each training stage as a Kubeflow Trainer TrainJob on the `runtime` ClusterTrainingRuntime
    (pipelines/crypson_pipeline.py, infra/kubeflow/README.md); `dvc repro` and a single pipeline task run one
    process, so there a product above 1 fails the stage instead of training on one GPU under other settings.
    """

    nodes: int = Field(1, ge=1, le=64)
    gpus_per_node: int = Field(1, ge=1, le=16)
    # BatchNorm statistics over the whole global batch (torch.nn.SyncBatchNorm, one all-reduce per BN layer and
    # step, CUDA only) instead of each rank's shard: the single-process statistics back, at a cost in speed.
    sync_batchnorm: bool = False
    # The Kubeflow Trainer runtime the TrainJobs use: the torch plugin's PET_* environment for torchrun.
    runtime: Literal["torch-distributed"] = "torch-distributed"

    @property
    def processes(self) -> int:
        return self.nodes * self.gpus_per_node


class Config(_Section):
    seed: int = Field(42, ge=0)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    data: DataConfig = DataConfig()
    prepare: PrepareConfig = PrepareConfig()
    validate_: ValidateConfig = Field(ValidateConfig(), alias="validate")
    cgan: CganConfig = CganConfig()
    vae: VaeConfig = VaeConfig()
    classifier: ClassifierConfig = ClassifierConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    attack: AttackConfig = AttackConfig()
    promote: PromoteConfig = PromoteConfig()
    cipher: CipherConfig = CipherConfig()
    tracking: TrackingConfig = TrackingConfig()
    distributed: DistributedConfig = DistributedConfig()

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _check_ranges(self) -> "Config":
        low, high = self.data.glyphs.scale_range
        if not 0 < low <= high <= 2:
            raise ValueError(f"data.glyphs.scale_range must satisfy 0 < low <= high <= 2, got {[low, high]}")
        low, high = self.validate_.pixel_mean_range
        if not 0 <= low < high <= 1:
            raise ValueError(f"validate.pixel_mean_range must satisfy 0 <= low < high <= 1, got {[low, high]}")
        self._check_distributed()
        return self

    def _check_distributed(self) -> None:
        """Each rank trains an equal share of every global batch (crypson.train.loop.fit), and torch's
        SyncBatchNorm synchronises CUDA tensors only: refuse what could not run, before any stage starts."""
        topology = self.distributed
        for stage in ("cgan", "vae", "classifier"):
            batch_size = getattr(self, stage).batch_size
            if batch_size % topology.processes:
                raise ValueError(f"{stage}.batch_size={batch_size} does not divide by distributed.nodes x "
                                 f"gpus_per_node = {topology.nodes} x {topology.gpus_per_node} = "
                                 f"{topology.processes} processes (each trains an equal share of every batch)")
        if topology.sync_batchnorm and topology.processes > 1 and self.device == "cpu":
            raise ValueError("distributed.sync_batchnorm=true needs CUDA (torch's SyncBatchNorm runs on GPUs only), "
                             "got device: cpu; set device: auto or cuda, or sync_batchnorm: false")


def _describe(error: dict[str, Any], model: type[BaseModel]) -> str:
    """One readable line for one pydantic error: the dotted key, what is wrong, the allowed values."""
    key = ".".join(str(part) for part in error["loc"])
    if error["type"] == "extra_forbidden":
        section: Any = model
        for part in error["loc"][:-1]:
            field = section.model_fields.get(part) or next(
                f for f in section.model_fields.values() if f.alias == part
            )
            section = field.annotation
        allowed = sorted(f.alias or name for name, f in section.model_fields.items())
        return f"unknown key '{key}'; allowed keys here: {', '.join(allowed)}"
    if error["type"] == "value_error":  # a validator of ours: its message names the values already
        return f"{key + ': ' if key else ''}{error['msg'].removeprefix('Value error, ')}"
    return f"{key}: {error['msg']} (got {error.get('input')!r})"


def parse_config(raw: dict[str, Any], source: str = "params") -> Config:
    """Validate a params mapping.

    Args:
        raw: the parsed YAML mapping.
        source: a name for error messages (usually the file path).
    Returns:
        The validated Config.
    Raises:
        ConfigError: naming every bad key, its value and what is allowed.
    """
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of sections, got {type(raw).__name__}")
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        lines = [_describe(err, Config) for err in exc.errors()]
        raise ConfigError(f"{source}: invalid params:\n  " + "\n  ".join(lines)) from None


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Recursively merge `override` into a copy of `base` (override wins)."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_config(path: Path | str = "params.yaml", overrides: list[Path] | None = None) -> Config:
    """Read params.yaml (plus optional partial override files, applied in order) into a Config."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"params file not found: {path.resolve()}")
    raw = yaml.safe_load(path.read_text()) or {}
    for override in overrides or []:
        raw = deep_merge(raw, yaml.safe_load(Path(override).read_text()) or {})
    return parse_config(raw, source=str(path))


def section_params(config: Config, *sections: str) -> dict[str, Any]:
    """Flatten the named sections (dotted keys) for MLflow params: exactly what a stage used."""
    dumped = config.model_dump(by_alias=True, mode="json")
    flat: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                walk(f"{prefix}.{key}" if prefix else key, inner)
        else:
            flat[prefix] = value

    for section in sections:
        walk(section, dumped[section])
    return flat
