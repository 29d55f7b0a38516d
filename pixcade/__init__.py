"""pixcade: Imagen-style cascaded text-to-image diffusion."""

__version__ = "0.1.0"
