"""panza-local: a personal writing assistant that learns your style and drafts in your voice, offline."""

import os as _os

__version__ = "0.1.0"

# Private by construction: no library this package uses may phone home or fetch from a hub at run time.
# Forced, not defaulted: a user's shell that says HF_HUB_OFFLINE=0 or telemetry on must not change that.
# `panza models pull` is the one place that lifts HF_HUB_OFFLINE, for its own download only.
for _k, _v in {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "ANONYMIZED_TELEMETRY": "False",
    "DO_NOT_TRACK": "1",
    "TOKENIZERS_PARALLELISM": "false",
}.items():
    _os.environ[_k] = _v
