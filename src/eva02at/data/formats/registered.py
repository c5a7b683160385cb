"""Every annotation format of this package, registered: import this to read a collection in any format.

A new format is a module of this package and its name on the import line below (modules register when
imported; a static import is what lets the stages' code deps follow it).
"""

from eva02at.data.annotations import FORMATS, read_segments
from eva02at.data.formats import charades, egoclip, egomcq, ek100, videolist  # noqa: F401  (each registers itself)

__all__ = ["FORMATS", "read_segments"]
