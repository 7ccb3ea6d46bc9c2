"""pytest plugin: apply ``esper_fast.patch_esper()`` before esper's tests are collected.

    python -m pytest -p esper_patch_plugin <esper>/tests/...   (this folder on PYTHONPATH)

Prints what was patched; ``ESPER_FAST_PATCH=0`` skips the patch (the baseline run).
"""

from __future__ import annotations

import os


def pytest_configure(config):
    if os.environ.get("ESPER_FAST_PATCH", "1") == "0":
        print("esper_patch_plugin: ESPER_FAST_PATCH=0, esper left unpatched")
        return
    import esper_fast

    patch = esper_fast.patch_esper()
    print(
        f"esper_patch_plugin: layout {patch.layout}; rebound {patch.patched}; wrapped {patch.wrapped}; "
        f"call-time importers {patch.resolved_at_call}; skipped {sorted(patch.skipped)}"
    )


def pytest_report_header(config):
    import esper_fast.integrations.esper as integration

    patch = integration.active_patch()
    return f"esper_fast patch: {'layout ' + patch.layout if patch else 'not applied'}"
