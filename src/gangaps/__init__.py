"""gangaps: sequential training of GANs against GAN-classifiers (Pathak & Dufour, CVPR 2023)."""

__version__ = "0.1.0"
