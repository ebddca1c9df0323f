"""Config folders shipped by plugin packages, put on Hydra's search path for train_free_eval.py.

A package that ships a method (entry-point group ``xattr.methods``) ships its yaml the same
way: an entry ``<name> = "<package holding config groups>"`` in the group ``xattr.conf``
(e.g. ``my_pkg = "my_pkg.conf"`` with ``my_pkg/conf/method/gradient_norm.yaml``). Each such
package is appended to the search path after ``conf/``, so our configs win on a name clash.
"""

from __future__ import annotations

from importlib.metadata import entry_points

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin

CONF_GROUP = "xattr.conf"


class PluginConfigs(SearchPathPlugin):
    """Appends ``pkg://<value>`` for every entry of the ``xattr.conf`` entry-point group."""

    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        """Add each plugin package's config folder (sorted by entry name, for a stable order)."""
        for ep in sorted(entry_points(group=CONF_GROUP), key=lambda e: e.name):
            search_path.append(provider=f"{CONF_GROUP}:{ep.name}", path=f"pkg://{ep.value}")


def register_plugin_configs() -> None:
    """Make Hydra consult :class:`PluginConfigs` when it builds a config search path."""
    from hydra.core.plugins import Plugins

    Plugins.instance().register(PluginConfigs)
