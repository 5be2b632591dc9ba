"""graygate: a gray-release gate. The application shell (CLI, process roles, admin web app,
demo, embedded PostgreSQL) sits on top; the bottom modules (``vocabulary``, ``values``,
``errors``, ``tasks``) are the shared vocabulary every layer may import. Importing this
package loads nothing else."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("graygate")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

__all__ = ["__version__"]
