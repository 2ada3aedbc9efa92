"""The software version published in capability records."""

from importlib.metadata import PackageNotFoundError, version

try:
    SOFTWARE_VERSION = f"gpunet/{version('gpunet')}"
except PackageNotFoundError:  # running from a checkout without installing
    SOFTWARE_VERSION = "gpunet/0.0.0+src"
