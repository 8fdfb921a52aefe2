"""latentsync: lip-sync a video to new speech with the LatentSync latent diffusion U-Net."""

__version__ = "0.1.0"
