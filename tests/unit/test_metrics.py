import math

import pytest
import torch

from crypson.evaluate.metrics import accuracy_from_confusion, confusion_matrix, psnr_per_image, ssim


def test_psnr_against_hand_computed_case():
    target = torch.zeros(2, 1, 2, 2)
    reconstruction = target.clone()
    reconstruction[0] += 0.1  # MSE 0.01 -> 10 log10(1 / 0.01) = 20 dB
    reconstruction[1, 0, 0, 0] = 0.5  # MSE 0.25 / 4 = 0.0625 -> 10 log10(16) = 12.04 dB
    psnr = psnr_per_image(reconstruction, target)
    assert psnr[0].item() == pytest.approx(20.0, abs=1e-4)
    assert psnr[1].item() == pytest.approx(10 * math.log10(16), abs=1e-4)


def test_ssim_of_identical_images_is_one_and_drops_with_noise():
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(2, 1, 32, 32, generator=generator)
    assert ssim(images, images) == pytest.approx(1.0, abs=1e-5)
    noisy = (images + 0.3 * torch.randn(images.shape, generator=generator)).clamp(0, 1)
    assert ssim(noisy, images) < 0.9


def test_confusion_matrix_on_known_input():
    actual = torch.tensor([0, 0, 1, 1, 1, 2])
    predicted = torch.tensor([0, 1, 1, 1, 0, 2])
    confusion = confusion_matrix(predicted, actual, 3)
    assert confusion.tolist() == [[1, 1, 0], [1, 2, 0], [0, 0, 1]]  # rows actual, columns predicted
    accuracy, per_class = accuracy_from_confusion(confusion)
    assert accuracy == pytest.approx(4 / 6)
    assert per_class == pytest.approx([0.5, 2 / 3, 1.0])


def test_per_class_accuracy_of_absent_class_is_nan():
    confusion = confusion_matrix(torch.tensor([0, 0]), torch.tensor([0, 0]), 2)
    accuracy, per_class = accuracy_from_confusion(confusion)
    assert accuracy == 1.0 and per_class[0] == 1.0 and math.isnan(per_class[1])
