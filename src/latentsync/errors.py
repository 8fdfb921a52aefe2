"""Errors a user can cause. Each carries a one-line message; the CLI prints it and exits 2.

Anything that is not a `LatentSyncError` is a bug and may show a traceback.
"""


class LatentSyncError(Exception):
    """Base class: a problem with the user's input, files or environment."""


class ConfigError(LatentSyncError):
    """A config file or preset is missing, unreadable or inconsistent."""


class CheckpointError(LatentSyncError):
    """A weight file is missing, unreadable, corrupt or does not fit the model."""


class ModelNotFoundError(LatentSyncError):
    """A `--model` name or directory does not resolve to a complete model directory."""


class AudioError(LatentSyncError):
    """Audio input that cannot be used (unreadable, no audio stream, empty)."""


class DeviceError(LatentSyncError):
    """A requested device or dtype is not available on this machine."""


class VideoError(LatentSyncError):
    """Video input that cannot be used (unreadable, corrupt, no video stream) or output that cannot be written."""


class NoFaceError(LatentSyncError):
    """No usable face in any frame of the video (frames without a face are otherwise passed through)."""
