"""MoE-Spec for SGLang: budget the experts of every target MoE layer in EAGLE verify passes.

Installed with moe-spec as the SGLang plugin ``moe_spec`` (entry-point group
``sglang.srt.plugins``); configured by environment variables
(:mod:`moe_spec.integration.sglang.settings`); launched by ``moe-spec serve``.
"""

from moe_spec.integration.sglang.compat import (
    SUPPORTED_TEXT,
    UnsupportedSetupError,
    check_server_args,
)
from moe_spec.integration.sglang.settings import ServeSettings, settings_from_environ

__all__ = [
    "SUPPORTED_TEXT",
    "ServeSettings",
    "UnsupportedSetupError",
    "check_server_args",
    "settings_from_environ",
]
