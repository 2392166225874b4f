"""Training stages: cGAN, VAE, classifier. Each trains through the shared loop, saves its model
file (a DVC output), logs its MLflow run and registers a new version with alias `candidate`.

Under torchrun (`torchrun --nproc_per_node=N -m crypson stage train-vae`) every rank runs the
stage inside one process group and trains its shard; rank 0 alone tracks and writes outputs,
the other ranks get no tracking context (None), track nothing and return an empty dict (see
crypson.train.distributed)."""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import mlflow
import torch

from crypson import model_files, tracking
from crypson.compute import derived_seed, resolve_device, seed_everything
from crypson.config import Config, section_params
from crypson.data.prepare import PreparedData, load_prepared
from crypson.evaluate import figures
from crypson.evaluate.metrics import accuracy_from_confusion, confusion_matrix
from crypson.inference import chunked, inference_chunk, sample_per_class
from crypson.files import atomic_write_json
from crypson.models import cgan as cgan_model
from crypson.models import classifier as classifier_model
from crypson.models import vae as vae_model
from crypson.stages.common import log_image_grid, log_loss_curves, write_csv
from crypson.layout import DISCRIMINATOR_FILE, Layout
from crypson.train import cgan as cgan_train
from crypson.train import classifier as classifier_train
from crypson.train import distributed, loop
from crypson.train import vae as vae_train
from crypson.train.loop import FitResult, InMemoryBatches, LoopSettings, fingerprint_of, fit


log = logging.getLogger(__name__)

# Batches of noise over which the EMA generator's BatchNorm statistics are recomputed.
EMA_BATCHNORM_BATCHES = 32


def _settings(config: Config, layout: Layout, stage: str, data: PreparedData,
              code: tuple[ModuleType, ...], progress: bool) -> LoopSettings:
    section = getattr(config, stage)
    modules = (loop, distributed, *code)
    world = distributed.current()
    distributed.check_world(world, config.distributed.processes)
    device = distributed.local_device(resolve_device(config.device), world)
    return LoopSettings(
        epochs=section.epochs,
        checkpoint_path=layout.checkpoint(stage),
        # A checkpoint is resumed only by the same params, data and training code.
        fingerprint=fingerprint_of(section.model_dump(mode="json"), config.seed, data.manifest["data_version"],
                                   files=tuple(Path(m.__file__) for m in modules)),
        device=device,
        seed=config.seed,
        max_train_batches=section.max_train_batches,
        progress=progress and world.is_main,
        world=world,
        sync_batchnorm=distributed.sync_batchnorm_on(world, device, config.distributed.sync_batchnorm),
    )


def _in_process_group(stage: Callable[..., dict]) -> Callable[..., dict]:
    """Run a training stage inside torchrun's process group (a no-op for a single process)."""

    @functools.wraps(stage)
    def run(config: Config, *args: Any, **kwargs: Any) -> dict:
        with distributed.process_group(resolve_device(config.device)):
            return stage(config, *args, **kwargs)

    return run


def _run_params(config: Config, stage: str, data: PreparedData) -> dict[str, Any]:
    """What this run depends on: its own section, the seed, the device, and the data's identity."""
    return {**section_params(config, stage), "seed": config.seed, "device": config.device,
            "data.source": data.manifest["source"], "data.split": data.manifest["split"],
            "data.version": data.manifest["data_version"], "data.num_classes": len(data.classes)}


@contextmanager
def _tracked_fit(task: loop.TrainTask, batches: InMemoryBatches, settings: LoopSettings,
                 context: tracking.TrackingContext | None, stage: str,
                 params: dict[str, Any], dataset: tuple[Path, dict[str, Any]],
                 after_epoch: Callable[[int], None] | None = None) -> Iterator[FitResult]:
    """Fit inside the stage's MLflow run, resuming both the run and the weights after an interruption.

    Ranks other than 0 fit without MLflow: rank 0 logs the metrics averaged over all ranks, then calls
    `after_epoch(epoch)` (e.g. to log that epoch's sample grid)."""
    if not settings.world.is_main:
        yield fit(task, batches, settings)
        return
    if context is None:
        raise ValueError(f"{stage}: rank 0 needs a tracking context, got None")
    checkpoint = loop.read_checkpoint(settings)
    resume_id = checkpoint["extra"].get("mlflow_run_id") if checkpoint else None
    with tracking.stage_run(context, stage, resume_id) as run_id:
        tracking.log_params(params)
        if resume_id is None:  # a resumed run has its input already
            tracking.log_dataset(*dataset, context="training")
        # A tag, not a param: a resumed run may continue on another number of processes.
        mlflow.set_tag("crypson.world_size", settings.world.size)
        mlflow.set_tag("crypson.sync_batchnorm", settings.world.is_distributed and settings.sync_batchnorm)
        if checkpoint is not None:
            resumed_at = checkpoint["epoch"] + 2  # 1-based: the epoch after the checkpoint's
            log.info("%s: resuming at epoch %d of %d from %s (MLflow run %s)", stage, resumed_at, settings.epochs,
                     settings.checkpoint_path, run_id)
            mlflow.set_tag("crypson.resumed_at_epoch", resumed_at)
        def on_epoch_end(epoch: int, metrics: dict[str, float]) -> None:
            tracking.log_epoch_metrics(epoch, metrics)
            if after_epoch is not None:
                after_epoch(epoch)

        yield fit(task, batches, settings, on_epoch_end=on_epoch_end, extra={"mlflow_run_id": run_id})


def _finish(layout: Layout, stage: str, result: FitResult, registration: dict[str, str]) -> None:
    """Stage outputs for DVC: registration record, final metrics, per-epoch plot; then drop the checkpoint."""
    atomic_write_json(layout.registration(stage.removeprefix("train_")), registration)
    # The metrics of the epoch whose weights were kept; timings are machine noise, not metrics.
    best = {key: round(value, 6) for key, value in result.history[result.best_epoch].items()
            if not key.endswith(("_second", "_seconds"))}
    atomic_write_json(layout.metrics(stage), {**best, "best_epoch": result.best_epoch + 1})
    write_csv(layout.plot(f"{stage}.csv"),
              [{"epoch": i + 1, **{k: round(v, 6) for k, v in row.items()}} for i, row in enumerate(result.history)])
    layout.checkpoint(stage.removeprefix("train_")).unlink(missing_ok=True)


def _register(context: tracking.TrackingContext, kind: str, logged: tracking.LoggedNetwork, data: PreparedData,
              description: str, extra_tags: dict[str, str] | None = None) -> dict[str, str]:
    name = tracking.MODEL_NAMES[kind]
    tags = {**context.tags, "data_source": data.manifest["source"], "data_split": data.manifest["split"],
            "classes": json.dumps("".join(data.classes)), "run_id": mlflow.active_run().info.run_id,
            **logged.tags, **(extra_tags or {})}
    model_uri = logged.model_uri
    version = tracking.register_version(model_uri, name, tags, description)
    mlflow.set_tag(f"registered.{name}", version)
    return {"name": name, "version": version, "run_id": tags["run_id"], "model_uri": model_uri,
            "model_id": logged.model_id}


@_in_process_group
def train_cgan(config: Config, layout: Layout, context: tracking.TrackingContext | None,
               progress: bool = True) -> dict:
    """Train the conditional GAN on the training split; register `crypson-cgan`."""
    data = load_prepared(layout.prepared)
    section, classes = config.cgan, data.classes
    settings = _settings(config, layout, "cgan", data, (cgan_model, cgan_train), progress)
    seed_everything(config.seed)
    g_params = model_files.hparams_from_config("generator", config, len(classes))
    d_params = model_files.hparams_from_config("discriminator", config, len(classes))
    generator = model_files.build("generator", g_params).to(settings.device)
    discriminator = model_files.build("discriminator", d_params).to(settings.device)
    task = cgan_train.CganTask(generator, discriminator, section.lr, section.betas, section.loss,
                               section.aux_weight, section.ema_decay, section.class_margin, section.mode_seeking)
    batches = InMemoryBatches((torch.from_numpy(data.train.images), torch.from_numpy(data.train.labels)),
                              section.batch_size, seed=config.seed)
    def epoch_grid(epoch: int) -> None:  # the live generator, the same noise each epoch: MLflow's image slider
        samples, _ = sample_per_class(generator, EPOCH_GRID_PER_CLASS, derived_seed(config.seed, "epoch-grid"))
        figure = figures.class_grid_figure(samples, EPOCH_GRID_PER_CLASS, classes, f"epoch {epoch + 1}")
        mlflow.log_image(figures.png_image(figure), key="samples_per_class", step=epoch)

    with _tracked_fit(task, batches, settings, context, "train_cgan", _run_params(config, "cgan", data),
                      (layout.prepared, data.manifest), epoch_grid) as result:
        if not settings.world.is_main:
            return {}
        discriminator.load_state_dict(result.best_state["discriminator"])
        if section.ema_decay is None:
            generator.load_state_dict(result.best_state["generator"])
        else:  # the averaged weights are the ones saved, registered and sampled (Yazici et al. 2019)
            generator.load_state_dict(cgan_train.averaged_state(result.best_state["generator_ema"]))
            cgan_train.recompute_batchnorm(generator, EMA_BATCHNORM_BATCHES, section.batch_size,
                                           derived_seed(config.seed, "ema-batchnorm"))
        generator.eval()
        out = layout.model_dir("cgan")
        model_files.save_model(layout.model_file("cgan"), "generator", g_params,
                             {k: v.detach().cpu() for k, v in generator.state_dict().items()}, classes)
        model_files.save_model(out / DISCRIMINATOR_FILE, "discriminator", d_params,
                             result.best_state["discriminator"], classes)
        samples, _ = sample_per_class(generator, section.samples_per_class, config.seed)
        grid = figures.class_grid_figure(samples, section.samples_per_class, classes,
                                         f"cGAN samples, one row a class (truncation {section.truncation})")
        mlflow.log_figure(grid, "samples_per_class.png")
        figures.plt.close(grid)
        log_loss_curves(result.history, ["loss_discriminator", "loss_generator"], "loss_curves.png")
        probe = (torch.randn(4, section.noise_dim), torch.arange(4) % len(classes))
        logged = tracking.log_network(generator, layout.model_file("cgan"), "generator", "generator", probe,
                                      lambda m, p: m(*p), step=result.best_epoch)
        registration = _register(context, "cgan", logged, data,
                                 "Conditional GAN: (noise, class index) -> 32x32 character image in [-1, 1].",
                                 {"truncation": str(section.truncation), "ema_decay": str(section.ema_decay)})
    _finish(layout, "train_cgan", result, registration)
    return registration


def vae_task(config: Config, data: PreparedData, device: torch.device) -> tuple[dict, vae_model.VAE,
                                                                                   vae_train.VaeTask]:
    """What the VAE stage trains: (hyper-parameters, the VAE they build, the task with the configured loss
    weights and the validation split)."""
    section = config.vae
    params = model_files.hparams_from_config("vae", config, len(data.classes))
    vae = model_files.build("vae", params).to(device)
    task = vae_train.VaeTask(vae, section.lr, section.betas, section.recon_weight, section.kl_weight,
                             torch.from_numpy(data.val.images), section.batch_size, section.class_weight,
                             torch.from_numpy(data.val.labels))
    return params, vae, task


@_in_process_group
def train_vae(config: Config, layout: Layout, context: tracking.TrackingContext | None,
              progress: bool = True) -> dict:
    """Train the VAE on real (or glyph) training images; register `crypson-vae`."""
    data = load_prepared(layout.prepared)
    section = config.vae
    settings = _settings(config, layout, "vae", data, (vae_model, vae_train), progress)
    seed_everything(config.seed)
    params, vae, task = vae_task(config, data, settings.device)
    batches = InMemoryBatches((torch.from_numpy(data.train.images), torch.from_numpy(data.train.labels)),
                              section.batch_size, seed=config.seed)
    with _tracked_fit(task, batches, settings, context, "train_vae", _run_params(config, "vae", data),
                      (layout.prepared, data.manifest)) as result:
        if not settings.world.is_main:
            return {}
        vae.load_state_dict(result.best_state["vae"])
        model_files.save_model(layout.model_file("vae"), "vae", params, result.best_state["vae"], data.classes)
        sample = torch.from_numpy(data.test.images[:32])
        log_image_grid(vae_train.reconstruction_grid(vae, sample), "reconstructions.png", columns=16)
        log_loss_curves(result.history, ["loss", "val_loss"], "loss_curves.png")
        probe = (vae_train.to_unit_range(sample[:4]),)
        logged = tracking.log_network(vae, layout.model_file("vae"), "vae", "vae", probe,
                                      lambda m, p: m.decoder(m.encode_mean(p[0])).flatten(), step=result.best_epoch)
        registration = _register(context, "vae", logged, data,
                                 f"VAE: 32x32 image in [0, 1] <-> {section.latent_dim}-d latent (encode_mean, decoder).")
    _finish(layout, "train_vae", result, registration)
    return registration


EPOCH_GRID_PER_CLASS = 4  # images per class in the per-epoch sample grid (MLflow image, one step an epoch)
# Extra cGAN images drawn per class so that the ones the discriminator disputes can be left out.
DISPUTED_RESERVE = 1.5


def _undisputed(discriminator: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor,
                per_class: int) -> torch.Tensor:
    """Row indices of the first `per_class` images of each class whose class the discriminator's class head
    confirms (its argmax is the intended class); without a class head, of the first `per_class` of each."""
    if getattr(discriminator, "has_class_head", False):
        device = next(discriminator.parameters()).device
        predicted = chunked(lambda batch: discriminator.classify(batch.to(device) * 2 - 1).argmax(1).cpu(), images,
                            512)
        agreed = predicted == labels
    else:
        agreed = torch.ones(len(labels), dtype=torch.bool)
    kept = [torch.nonzero(agreed & (labels == c)).flatten()[:per_class] for c in labels.unique()]
    return torch.cat(kept)


def _generated_latents(layout: Layout, vae: torch.nn.Module, count: int, classes: int, seed: int,
                       device: torch.device, filter_disputed: bool) -> tuple[torch.Tensor, ...]:
    """(mu, logvar, labels, kept fraction) of about `count` class-balanced cGAN images: the images the
    cipher encodes. With `filter_disputed`, images whose class the discriminator's class head disputes
    are left out (they are not trustworthy labelled data); the judge never takes part in training."""
    generator, _ = model_files.load_network(layout, "cgan", device)
    per_class = -(-count // classes)
    if filter_disputed:
        discriminator, _ = model_files.load_model(layout.model_dir("cgan") / DISCRIMINATOR_FILE, "discriminator", device)
        images, labels = sample_per_class(generator, math.ceil(per_class * DISPUTED_RESERVE), seed)
        rows = _undisputed(discriminator, images, labels, per_class)
        kept_fraction = len(rows) / (per_class * classes)
        images, labels = images[rows], labels[rows]
    else:
        images, labels = sample_per_class(generator, per_class, seed)
        kept_fraction = 1.0
    mu, logvar = classifier_train.encode_images(vae, images.mul(255).round().to(torch.uint8).squeeze(1))
    return mu[:count].cpu(), logvar[:count].cpu(), labels[:count], kept_fraction


def _calibrate_worst_class(classifier: torch.nn.Module, layout: Layout, vae: torch.nn.Module, per_class: int,
                           classes: int, seed: int, device: torch.device) -> None:
    """Fold per-class logit offsets (classifier_train.fit_class_offsets) into the classifier's last bias,
    fitted on `per_class` fresh cGAN images of every class (unfiltered: what the sender draws); log the
    worst class's accuracy on them before and after. The network's shape and files stay as they are."""
    mu, _, labels, _ = _generated_latents(layout, vae, per_class * classes, classes, seed, device, False)
    classifier.eval()
    logits = chunked(lambda batch: classifier(batch.to(device)).float().cpu(), mu, inference_chunk(device))
    offsets = classifier_train.fit_class_offsets(logits, labels, classes)
    before, after = (torch.tensor(accuracy_from_confusion(confusion_matrix(shifted.argmax(1), labels, classes))[1])
                     for shifted in (logits, logits + offsets))
    with torch.no_grad():
        classifier.head[-1].bias += offsets.to(classifier.head[-1].bias.device)
    mlflow.log_metrics({"calibration_worst_class_accuracy_before": float(before.min()),
                        "calibration_worst_class_accuracy_after": float(after.min()),
                        "calibration_mean_accuracy_after": float(after.mean()),
                        "calibration_max_abs_offset": float(offsets.abs().max())})
    log.info("classifier calibration on %d cGAN images a class: worst class %.4f -> %.4f (largest offset %.2f)",
             per_class, float(before.min()), float(after.min()), float(offsets.abs().max()))


@_in_process_group
def train_classifier(config: Config, layout: Layout, context: tracking.TrackingContext | None,
                     progress: bool = True) -> dict:
    """Train the latent classifier over the trained VAE's frozen decoder; register `crypson-classifier`.

    Its training latents are those of real training images and, for `generated_fraction` of
    them, of fresh cGAN images: the cipher always classifies cGAN images, so the classifier
    learns both; evaluation reports accuracy on each separately.
    """
    data = load_prepared(layout.prepared)
    section = config.classifier
    settings = _settings(config, layout, "classifier", data,
                         (classifier_model, classifier_train, vae_model), progress)
    vae_path, cgan_path = layout.model_file("vae"), layout.model_file("cgan")
    vae_registration = json.loads(layout.registration("vae").read_text())
    cgan_registration = json.loads(layout.registration("cgan").read_text())
    # The VAE's and the cGAN's weights are part of what a classifier checkpoint depends on.
    settings = dataclasses.replace(settings, fingerprint=fingerprint_of(settings.fingerprint,
                                                                         files=(vae_path, cgan_path)))
    vae, _ = model_files.load_network(layout, "vae", settings.device)
    seed_everything(config.seed)
    classes = len(data.classes)
    params = {"latent_dim": vae.latent_dim, "channels": list(vae.channels), "decoder_output": vae.decoder_output,
              "num_classes": classes, "hidden": section.hidden, "dropout": section.dropout}
    classifier = classifier_model.LatentClassifier(vae.decoder, classes, section.hidden,
                                                   section.dropout).to(settings.device)
    mu, logvar = classifier_train.encode_images(vae, torch.from_numpy(data.train.images))
    labels = torch.from_numpy(data.train.labels)
    val_mu, _ = classifier_train.encode_images(vae, torch.from_numpy(data.val.images))
    validation = {"real": (val_mu, torch.from_numpy(data.val.labels))}
    fraction, kept_fraction = section.generated_fraction, 1.0
    if fraction > 0:
        count = round(len(labels) * fraction / (1 - fraction))
        gen_mu, gen_logvar, gen_labels, kept_fraction = _generated_latents(
            layout, vae, count, classes, derived_seed(config.seed, "classifier-train"), settings.device, True)
        mu, logvar = torch.cat([mu.cpu(), gen_mu]), torch.cat([logvar.cpu(), gen_logvar])
        labels = torch.cat([labels, gen_labels])
        # Validation scores every fresh image, disputed or not: what the cipher will meet.
        val_gen_mu, _, val_gen_labels, _ = _generated_latents(
            layout, vae, len(data.val.labels), classes, derived_seed(config.seed, "classifier-val"),
            settings.device, False)
        validation["generated"] = (val_gen_mu, val_gen_labels)
    task = classifier_train.ClassifierTask(classifier, section.lr, section.betas, validation, section.batch_size)
    batches = InMemoryBatches((mu.cpu(), logvar.cpu(), labels), section.batch_size, seed=config.seed)
    versions = {"vae_version": vae_registration["version"], "cgan_version": cgan_registration["version"]}
    run_params = {**_run_params(config, "classifier", data), **{k.replace("_", "."): v for k, v in versions.items()}}
    with _tracked_fit(task, batches, settings, context, "train_classifier", run_params,
                      (layout.prepared, data.manifest)) as result:
        if not settings.world.is_main:
            return {}
        # Share of drawn cGAN images the discriminator's class head confirmed (1.0: no class head, all used).
        mlflow.log_metric("generated_undisputed_fraction", kept_fraction)
        classifier.load_state_dict(result.best_state["classifier"])
        if section.calibration_per_class > 0:
            _calibrate_worst_class(classifier, layout, vae, section.calibration_per_class, classes,
                                   derived_seed(config.seed, "classifier-calibration"), settings.device)
        model_files.save_model(layout.model_file("classifier"), "classifier", params,
                               {key: value.detach().cpu() for key, value in classifier.state_dict().items()},
                               data.classes)
        log_loss_curves(result.history, [k for k in result.history[0] if k.startswith("val_accuracy")],
                        "accuracy_curves.png")
        logged = tracking.log_network(classifier, layout.model_file("classifier"), "classifier",
                                      "classifier", (val_mu[:4].cpu(),), lambda m, p: m(*p), step=result.best_epoch)
        registration = _register(
            context, "classifier", logged, data,
            "Latent classifier: latent -> class logits through the frozen VAE decoder.", versions)
    _finish(layout, "train_classifier", result, registration)
    return registration
