"""models/unet."""
