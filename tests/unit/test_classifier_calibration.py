"""Per-class logit offsets for the worst class (Group DRO over the classes): the fit and its folding into
the classifier that the cipher uses."""

import pytest
import torch
import torch.nn.functional as F

from crypson.models.classifier import LatentClassifier
from crypson.models.vae import VAE
from crypson.stages import training
from crypson.evaluate.metrics import accuracy_from_confusion, confusion_matrix
from crypson.train.classifier import fit_class_offsets


def confusable(rows: int = 300, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """3 classes; class 0 overlaps class 1 (like EMNIST's I and l), so a plain argmax reads class 0 worst."""
    source = torch.Generator().manual_seed(seed)
    labels = torch.arange(3).repeat_interleave(rows)
    logits = torch.randn(len(labels), 3, generator=source) * 0.5
    logits[labels == 2, 2] += 4.0  # class 2: easy
    logits[labels == 1, 1] += 2.0  # class 1: fairly easy
    logits[labels == 0, 0] += 1.0  # class 0: its images look like class 1's
    logits[labels == 0, 1] += 0.8
    return logits, labels


def per_class_accuracy(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    return torch.tensor(accuracy_from_confusion(confusion_matrix(logits.argmax(1), labels, num_classes))[1])


def test_offsets_lift_the_worst_class_on_fresh_rows_and_keep_the_mean_zero():
    logits, labels = confusable()
    offsets = fit_class_offsets(logits, labels, 3)
    assert offsets.shape == (3,) and abs(float(offsets.sum())) < 1e-5  # a common shift decides nothing
    assert offsets[0] > offsets[1]  # the boundary moves towards the confusable neighbour
    fresh_logits, fresh_labels = confusable(seed=1)  # measured on rows it was not fitted on
    before, after = (per_class_accuracy(fresh_logits + shift, fresh_labels, 3) for shift in (0, offsets))
    assert float(before.min()) < 0.85 and float(after.min()) > float(before.min()) + 0.05
    worst_loss = [max(float(F.cross_entropy(fresh_logits[fresh_labels == c] + shift, fresh_labels[fresh_labels == c]))
                      for c in range(3)) for shift in (0, offsets)]
    assert worst_loss[1] < worst_loss[0]
    assert torch.equal(offsets, fit_class_offsets(logits, labels, 3))  # no randomness in the fit


def test_offsets_need_every_class():
    logits, labels = confusable()
    with pytest.raises(ValueError, match=r"class indices \[2\]"):
        fit_class_offsets(logits[labels != 2], labels[labels != 2], 3)


def test_calibration_folds_the_offsets_into_the_classifiers_last_bias(monkeypatch):
    """The stage's step: the calibrated network gives exactly its old logits plus the fitted offsets, with the
    same parameters (so its files, signature and served model stay as they were)."""
    torch.manual_seed(0)
    vae = VAE(latent_dim=4, channels=(4, 4, 8, 8))
    classifier = LatentClassifier(vae.decoder, num_classes=3, hidden=8, dropout=0.0)
    latents, labels = torch.randn(90, 4), torch.arange(3).repeat_interleave(30)
    requested, logged = {}, {}

    def generated(layout, vae, count, classes, seed, device, filter_disputed):  # the cGAN's images' latents
        requested.update(count=count, classes=classes, filter_disputed=filter_disputed)
        return latents, None, labels, 1.0

    monkeypatch.setattr(training, "_generated_latents", generated)
    monkeypatch.setattr(training.mlflow, "log_metrics", logged.update)
    classifier.eval()
    with torch.no_grad():
        before = classifier(latents)
    keys = set(classifier.state_dict())
    training._calibrate_worst_class(classifier, None, vae, 30, 3, seed=7, device=torch.device("cpu"))
    with torch.no_grad():
        after = classifier(latents)
    assert requested == {"count": 90, "classes": 3, "filter_disputed": False}  # what the sender draws: all of it
    assert torch.allclose(after - before, fit_class_offsets(before, labels, 3).expand_as(before), atol=1e-5)
    assert set(classifier.state_dict()) == keys
    assert logged["calibration_worst_class_accuracy_after"] >= logged["calibration_worst_class_accuracy_before"]
