"""Every loss module, imported so that each registers: what a stage imports when its params choose the loss.

A new loss module goes on the import line below. A stage that always trains with one loss imports that loss's
module alone, so that a change to another loss does not rerun it.
"""

from __future__ import annotations

from eva02at.train.losses import adaptive_mi_mm, infonce, mi_mm, sms  # noqa: F401  (each registers when imported)
