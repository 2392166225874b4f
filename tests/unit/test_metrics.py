import io
import math

import numpy as np
import pytest
import torch

from crypson.evaluate import figures
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


@pytest.mark.parametrize(("count", "columns"), [(2, 4), (5, 2), (6, 3), (7, 16)])
def test_tile_lays_out_images_as_torchvision_does(count, columns):
    from torchvision.utils import make_grid

    images = torch.rand(count, 1, 5, 4)
    expected = make_grid(images, nrow=columns, padding=2, pad_value=0.5)
    assert torch.equal(figures.tile(images, columns), expected)


def test_one_image_is_tiled_with_its_padding_too():  # make_grid returns a lone image unpadded
    image = torch.rand(1, 1, 5, 4)
    grid = figures.tile(image, 4)
    assert grid.shape == (3, 9, 8) and torch.equal(grid[:, 2:7, 2:6], image[0].expand(3, -1, -1))
    assert (grid[:, :2] == 0.5).all() and (grid[:, :, :2] == 0.5).all()


def test_image_grid_png_is_the_tiled_images_in_8_bits():
    from PIL import Image

    images = torch.rand(3, 1, 4, 4)
    decoded = np.asarray(Image.open(io.BytesIO(figures.image_grid_png(images, 2))))
    expected = figures.tile(images, 2).mul(255).add(0.5).clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    assert decoded.shape == expected.shape and np.array_equal(decoded, expected)


def test_psnr_and_confusion_agree_with_torchmetrics():
    from torchmetrics.functional.classification import multiclass_confusion_matrix
    from torchmetrics.functional.image import peak_signal_noise_ratio

    torch.manual_seed(0)
    target, reconstruction = torch.rand(4, 1, 8, 8), torch.rand(4, 1, 8, 8)
    expected = peak_signal_noise_ratio(reconstruction, target, data_range=1.0, reduction="none", dim=(1, 2, 3))
    assert torch.allclose(psnr_per_image(reconstruction, target), expected, atol=1e-4)
    predicted, actual = torch.randint(0, 5, (200,)), torch.randint(0, 5, (200,))
    assert torch.equal(confusion_matrix(predicted, actual, 5), multiclass_confusion_matrix(predicted, actual, 5))


def test_confusion_matrix_names_an_out_of_range_class():
    with pytest.raises(ValueError, match=r"predicted classes must lie in 0..2, got 0..3"):
        confusion_matrix(torch.tensor([0, 3]), torch.tensor([0, 1]), 3)
