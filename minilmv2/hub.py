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
