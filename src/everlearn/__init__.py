"""everlearn: continual learning of large language models, from a YAML stream to a report.

The Python API (everlearn.api) is imported on first use, so ``import everlearn`` stays fast and
loads no torch: ``everlearn.run(config, **overrides)``, ``resume(run_dir)``, ``evaluate(...)``,
``load_results(run_dir)`` and ``export(run_dir, stage, out)``.
"""

__version__ = "0.1.0"

API = ("run", "resume", "evaluate", "load_results", "export", "RunResult")
__all__ = [*API, "__version__"]


def __getattr__(name: str):
    if name in API:  # on first use only (the submodules import __version__ from here)
        import importlib

        return getattr(importlib.import_module("everlearn.api"), name)
    raise AttributeError(f"module 'everlearn' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *API])
