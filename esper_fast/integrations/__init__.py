"""Integrations with other projects (floor 5: they import everything below, nothing imports them eagerly).

* :mod:`esper_fast.integrations.esper` - :func:`patch_esper` / :func:`unpatch_esper`: run esper's own
  trainer on esper_fast's fused policy; esper's exception class and validation toggle.
* :mod:`esper_fast.integrations.esper_checkpoint` - esper ``PPOAgent.save()`` checkpoints to
  esper_fast's format and back.
"""

from esper_fast.integrations.esper import (
    EsperPatch,
    UnsupportedEsperError,
    patch_esper,
    unpatch_esper,
)

__all__ = ["EsperPatch", "UnsupportedEsperError", "patch_esper", "unpatch_esper"]
