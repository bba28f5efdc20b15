"""Whether the Hugging Face hub may be reached: one answer for every script and start-up check."""

from __future__ import annotations


def hub_offline() -> bool:
    """True when the hub is off limits for models or datasets.

    The libraries' own switches, as they read them at import: `huggingface_hub.constants.HF_HUB_OFFLINE`
    (set by HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE) and `datasets.config.HF_DATASETS_OFFLINE` (HF_DATASETS_OFFLINE,
    else the hub's). Changing the environment after they are imported changes neither library, so it does not
    change this answer either.
    """
    import datasets.config
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE or datasets.config.HF_DATASETS_OFFLINE)


OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")


def offline_switches() -> str:
    """For messages when `hub_offline()`: the variables that the user set, e.g. "HF_HUB_OFFLINE=1"."""
    import os

    # huggingface_hub and datasets read these words as true.
    on = [name for name in OFFLINE_VARIABLES if os.environ.get(name, "").upper() in {"1", "ON", "YES", "TRUE"}]
    if on:
        return ", ".join(f"{name}={os.environ[name]}" for name in on)
    return " or ".join(OFFLINE_VARIABLES) + " is on"
