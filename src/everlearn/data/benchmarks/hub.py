"""A benchmark's files from the Hugging Face Hub: ``data_dir: hf:OWNER/NAME[/FOLDER][@REV]``.

The dataset repository (or only its ``FOLDER``) is fetched with huggingface_hub's
``snapshot_download`` into the Hugging Face cache, and the benchmark is then read from there
in its authors' layout, as from a local ``data_dir``. Only when a config asks for it: tests and
the default run never name a Hub source. Offline (``HF_HUB_OFFLINE``) the cache alone is used,
so a run that fetched once resumes without the network; what is missing is a one-line error.
"""

from __future__ import annotations

from pathlib import Path

from everlearn.errors import ConfigError, first_line

PREFIX = "hf:"


def is_hub_source(data_dir: str) -> bool:
    return data_dir.startswith(PREFIX)


def parse_hub_source(data_dir: str) -> tuple[str, str, str | None]:
    """``hf:OWNER/NAME[/FOLDER][@REV]`` -> (repo id, folder inside it or "", revision)."""
    text = data_dir[len(PREFIX):]
    text, _, revision = text.partition("@")
    parts = [p for p in text.strip("/").split("/") if p]
    if len(parts) < 2 or (revision == "" and "@" in data_dir):
        raise ConfigError(f"benchmark.data_dir: expected hf:OWNER/NAME[/FOLDER][@REVISION], "
                          f"got {data_dir!r}")
    return "/".join(parts[:2]), "/".join(parts[2:]), revision or None


def hub_data_dir(data_dir: str) -> Path:
    """The local folder holding ``data_dir``'s files (the folder inside the snapshot)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    from everlearn.models.source import hub_offline

    repo, folder, revision = parse_hub_source(data_dir)
    offline = hub_offline()
    where = f"benchmark.data_dir: {data_dir}"
    try:
        snapshot = snapshot_download(repo, repo_type="dataset", revision=revision,
                                     allow_patterns=[f"{folder}/**"] if folder else None,
                                     local_files_only=offline)
    except LocalEntryNotFoundError:
        if offline:
            raise ConfigError(f"{where}: not in the Hugging Face cache, and the Hub is offline "
                              "(HF_HUB_OFFLINE is set)") from None
        raise ConfigError(f"{where}: the Hub cannot be reached and the dataset is not in the "
                          "Hugging Face cache") from None
    except RevisionNotFoundError:
        raise ConfigError(f"{where}: the Hub's dataset {repo} has no revision "
                          f"{revision!r}") from None
    except RepositoryNotFoundError:
        raise ConfigError(f"{where}: the Hub has no dataset {repo} (or it is private: log in "
                          "with `hf auth login`)") from None
    except Exception as exc:  # connection errors differ across huggingface_hub versions
        first = first_line(exc)
        raise ConfigError(f"{where}: the Hub cannot be reached ({first}); set "
                          "HF_HUB_OFFLINE=1 to work from the cache") from None
    local = Path(snapshot) / folder
    if not local.is_dir():
        raise ConfigError(f"{where}: the dataset {repo} has no folder {folder!r}")
    return local
