"""Whether the Hugging Face hub may be reached: one answer for every script and start-up check."""

from __future__ import annotations


def hub_offline() -> bool:
    """True when the hub is off limits for models or datasets.

    The libraries' own switches, as they read them at import: `huggingface_hub.constants.HF_HUB_OFFLINE`
    (set by HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE) and `datasets.config.HF_DATASETS_OFFLINE` (HF_DATASETS_OFFLINE,
    else the hub's). Changing the environment after they are imported changes neither library, so it does not
    change this answer either. Without the datasets package (an optional dependency of the distillation: only
    hub datasets and files it reads need it), the hub's switch alone answers.
    """
    from huggingface_hub import constants

    try:
        import datasets.config
    except ImportError:
        return bool(constants.HF_HUB_OFFLINE)
    return bool(constants.HF_HUB_OFFLINE or datasets.config.HF_DATASETS_OFFLINE)


OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")
_TRUE = {"1", "ON", "YES", "TRUE"}  # the words huggingface_hub and datasets read as true


def offline_switches() -> str:
    """For messages when `hub_offline()`: the variables that made it so, as the user set them ("HF_HUB_OFFLINE=1").

    The libraries' precedence: huggingface_hub reads HF_HUB_OFFLINE when it is set and not empty, else
    TRANSFORMERS_OFFLINE; datasets reads HF_DATASETS_OFFLINE when it is set, else the hub's answer.
    """
    import os

    hub_variable = "HF_HUB_OFFLINE" if os.environ.get("HF_HUB_OFFLINE") else "TRANSFORMERS_OFFLINE"
    on = [hub_variable] if os.environ.get(hub_variable, "").upper() in _TRUE else []
    if os.environ.get("HF_DATASETS_OFFLINE", "").upper() in _TRUE:
        on.append("HF_DATASETS_OFFLINE")
    if on:
        return ", ".join(f"{name}={os.environ[name]}" for name in on)
    return " or ".join(OFFLINE_VARIABLES) + " is on"
