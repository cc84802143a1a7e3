"""ffm: federated foundation models on Flower.

Flower is told never to call home before it is first imported (telemetry and update checks off, its
home inside this environment) unless the user has chosen otherwise.
"""

import os
import sys

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
os.environ.setdefault("FLWR_HOME", os.path.join(sys.prefix, "flwr-home"))

__version__ = "0.1.0"

__all__ = ["__version__"]
