"""PASTA (Chattopadhyay et al., ICCV 2023): proportional amplitude spectrum training augmentation.

Synthetic images vary less than real ones in their high frequencies, so PASTA multiplies the
Fourier amplitude of each channel by Gaussian noise whose spread grows with the spatial
frequency, and keeps the phase (the image's structure):

    sigma[m, n] = (2 * alpha * sqrt(m^2 + n^2) / sqrt(H^2 + W^2)) ** k + beta
    spectrum'[m, n, c] = spectrum[m, n, c] * eps[m, n, c],   eps ~ N(1, sigma[m, n]^2)

with (m, n) the integer frequencies of an H x W image (-H/2 <= m < H/2). The paper's
defaults are alpha 3, beta 0.25, k 2. As in the official code (github.com/prithv1/PASTA,
PASTA_robustnet/datasets/pasta.py), the noise is independent at every frequency of every
channel and the image is the real part of the inverse transform, clipped to the pixel range
and truncated to uint8. The real part averages the noise of each frequency with that of its
mirror (-m, -n), so the image's spectrum is the original one times that average: the phase is
kept (flipped by pi where the average is negative, as in the official code), the amplitude is
scaled. rein-d2 applies that average directly to the half spectrum of a real FFT (scipy.fft,
float32), which gives the same image as the official full complex transform in about a third
of its time (1.4 s instead of 5 s for a 1914 x 1052 GTAV image, measured on a loaded CPU). The noise
comes from a numpy Generator seeded from numpy's global one, so Detectron2's seed fixes it.

The official code builds its frequency grid as [-(H/2 - 1), ..., 0, 0, ..., H/2 - 1] for an
even H (the negative frequencies one step too low) and divides by that grid's largest
radius; here the true frequencies and the paper's normalisation are used. The two differ
by one frequency step on the negative half, which is negligible at GTAV's 1914 x 1052.

Like the official RobustNet pipeline, which applies PASTA to the loaded image before its
geometric and colour augmentations, the training mapper applies it first (see train_mapper.py).
"""
from __future__ import annotations

import numpy as np
import scipy.fft
from detectron2.data import transforms as T
from fvcore.transforms.transform import NoOpTransform, Transform

from ..errors import ConfigError


def pasta_noise_std(height: int, width: int, alpha: float, beta: float, k: float) -> np.ndarray:
    """[H, W] standard deviation of the amplitude noise at every frequency, in np.fft order."""
    rows = np.fft.fftfreq(height, d=1.0 / height)  # integer frequencies 0, 1, ..., -2, -1
    cols = np.fft.fftfreq(width, d=1.0 / width)
    radius = np.hypot(rows[:, None], cols[None, :])
    return (2.0 * alpha * radius / np.hypot(height, width)) ** k + beta


def sample_amplitude_gains(std: np.ndarray, channels: int, rng: np.random.Generator) -> np.ndarray:
    """[H, W, C] multiplicative amplitude noise N(1, std^2), independent at every frequency and channel."""
    return 1.0 + std.astype(np.float32)[..., None] * rng.standard_normal((*std.shape, channels), dtype=np.float32)


def mirror_averaged(gains: np.ndarray) -> np.ndarray:
    """(g[m, n] + g[-m, -n]) / 2 of [H, W, C] gains: what the real part of the inverse transform applies."""
    mirror = np.roll(gains[::-1, ::-1], shift=(1, 1), axis=(0, 1))  # mirror[i, j] = gains[-i % H, -j % W]
    return (gains + mirror) / 2


def scale_amplitude_spectrum(image: np.ndarray, gains: np.ndarray) -> np.ndarray:
    """Re(ifft2(fft2(image) * gains)) per channel of an [H, W, C] image: the amplitude scaled, the phase
    kept; float32, neither clipped nor rounded."""
    h, w = image.shape[:2]
    spectrum = scipy.fft.rfft2(image.astype(np.float32), axes=(0, 1))
    return scipy.fft.irfft2(spectrum * mirror_averaged(gains)[:, :w // 2 + 1], s=(h, w), axes=(0, 1))


class AmplitudeSpectrumTransform(Transform):
    """One sampled PASTA perturbation of a uint8 image of the gains' size; labels are untouched."""

    def __init__(self, gains: np.ndarray) -> None:
        super().__init__()
        self.gains = gains

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        image = img[..., None] if img.ndim == 2 else img
        out = scale_amplitude_spectrum(image, self.gains)
        return np.clip(out, 0, 255).astype(np.uint8).reshape(img.shape)  # truncation, as ToPILImage

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        return coords

    def apply_segmentation(self, segmentation: np.ndarray) -> np.ndarray:
        return segmentation


class PASTA(T.Augmentation):
    """INPUT.PASTA: applied with probability `prob` (the official code always applies it)."""

    def __init__(self, alpha: float = 3.0, beta: float = 0.25, k: float = 2.0, prob: float = 1.0) -> None:
        super().__init__()
        if alpha < 0 or beta < 0 or k <= 0 or not 0.0 <= prob <= 1.0:
            raise ConfigError(f"INPUT.PASTA: ALPHA ({alpha}) and BETA ({beta}) must be >= 0, K ({k}) > 0 and "
                              f"PROB ({prob}) in [0, 1]; the paper uses ALPHA 3.0, BETA 0.25, K 2.0, PROB 1.0")
        self.alpha, self.beta, self.k, self.prob = alpha, beta, k, prob

    def get_transform(self, image: np.ndarray) -> Transform:
        if self.prob < 1.0 and np.random.rand() >= self.prob:
            return NoOpTransform()
        h, w = image.shape[:2]
        channels = image.shape[2] if image.ndim == 3 else 1
        std = pasta_noise_std(h, w, self.alpha, self.beta, self.k)
        rng = np.random.default_rng(np.random.randint(2**31))  # seeded from the global stream
        return AmplitudeSpectrumTransform(sample_amplitude_gains(std, channels, rng))
