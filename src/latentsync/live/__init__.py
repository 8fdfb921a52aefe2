"""Live lip-sync: speech streams in, the talking face streams out (`LiveSession`, `Avatar`)."""

from latentsync.live.avatar import Avatar
from latentsync.live.session import LiveFrame, LiveOptions, LiveSession, LiveStats

__all__ = ["Avatar", "LiveFrame", "LiveOptions", "LiveSession", "LiveStats"]
