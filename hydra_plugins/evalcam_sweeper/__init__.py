"""evalcam's Hydra sweeper plugin (``hydra/sweeper=evalcam``, the default of ``conf/config.yaml``).

Hydra instantiates sweepers only from the ``hydra_plugins`` namespace; the implementation and its
documentation are in :mod:`evalcam.sweeper`.
"""

from evalcam.sweeper import ComposeOnceSweeper as _ComposeOnceSweeper


class ComposeOnceSweeper(_ComposeOnceSweeper):
    """:class:`evalcam.sweeper.ComposeOnceSweeper` under the name Hydra accepts for a plugin."""
