"""WandbLogger that never prompts: online when W&B credentials exist, offline otherwise.

Credentials are ``WANDB_API_KEY``, ``WANDB_IDENTITY_TOKEN_FILE``, or an entry for the W&B host in
``~/.netrc`` (what ``wandb login`` writes). ``WANDB_MODE`` (``online``/``offline``/``disabled``)
and an explicit ``offline`` argument take precedence. Offline runs are written under
``<save_dir>/wandb/`` and can be uploaded later with ``wandb sync``.
"""

import netrc
import os
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

from lightning.pytorch.loggers import WandbLogger as _WandbLogger
from lightning.pytorch.utilities import rank_zero_info


def wandb_credentials_found() -> bool:
    """Whether ``wandb`` would find an API key without asking for one."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    # Looked up as wandb does: the machine is the URL's host:port (what `wandb login --host` writes),
    # and an entry without a password is no API key.
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).netloc
    path = Path(os.environ.get("NETRC") or Path.home() / ".netrc").expanduser()
    try:
        entry = netrc.netrc(str(path)).authenticators(host) if path.is_file() else None
    except (netrc.NetrcParseError, OSError):
        return False
    return entry is not None and bool(entry[2])


class WandbLogger(_WandbLogger):
    """Lightning's WandbLogger, online or offline by itself.

    Args:
        name: display name of the run.
        save_dir: the folder under which ``wandb/`` run files are written.
        project: the W&B project.
        offline: force offline (True) or online (False); None decides from ``WANDB_MODE`` and the
            credentials found.
        log_model: upload checkpoints as artifacts (online only).
        id: the run id, to resume a run.
        tags: tags of the run.
        group: group of the run.
        **kwargs: passed to ``wandb.init``.
    """

    def __init__(
        self,
        name: str | None = None,
        save_dir: str = "runs",
        project: str = "lightning_seq",
        offline: bool | None = None,
        log_model: Literal["all"] | bool = False,
        id: str | None = None,
        tags: list[str] | None = None,
        group: str | None = None,
        **kwargs: Any,
    ):
        mode = os.environ.get("WANDB_MODE", "").lower()
        if offline is None:
            # Not for WANDB_MODE=disabled: Lightning would then set WANDB_MODE=dryrun and write a run anyway.
            offline = mode in ("offline", "dryrun") or (
                mode not in ("online", "disabled") and not wandb_credentials_found()
            )
            if offline and mode not in ("offline", "dryrun", "disabled"):
                runs = Path(save_dir) / "wandb"
                rank_zero_info(
                    "wandb: no credentials found (WANDB_API_KEY or `wandb login`), logging offline to "
                    f"{runs}; upload later with `wandb sync {runs}/offline-run-*`"
                )
        if offline:
            log_model = False  # artifacts need a server
        Path(save_dir).mkdir(parents=True, exist_ok=True)
        super().__init__(
            name=name, save_dir=save_dir, project=project, offline=offline, log_model=log_model, id=id,
            tags=tags, group=group, **kwargs,
        )  # fmt: skip
        if self._wandb_init.get("anonymous") is None:  # wandb warns that the setting is deprecated
            self._wandb_init.pop("anonymous", None)
