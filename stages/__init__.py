"""The pipeline's stages: one module per DVC stage, run as ``python -m stages.<name>`` (see dvc.yaml).

Stage commands call the ``python`` on PATH: a shell that has not entered the project's environment (README,
Set-up) gets one line saying so instead of an import traceback.
"""

import importlib.util
import sys

if importlib.util.find_spec("eva02at") is None:
    sys.exit(
        f"eva02at is not installed for {sys.executable}: enter the project's environment first "
        "(source .venv/bin/activate, made by `make install`), then run dvc or the stage again"
    )
