"""evalcam's Hydra config tree. Importing it (Hydra does, to read ``pkg://evalcam.conf``) registers the
structured run config that ``config.yaml`` names first in its defaults list."""

from evalcam.schema import register

register()
