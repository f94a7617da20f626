"""pipework's wire: message models, codecs and the client other programs use.

It owns no process and never imports ``service``. The daemon protocol lands
with the daemon; until then this package is intentionally empty.
"""

from __future__ import annotations

__all__: list[str] = []
