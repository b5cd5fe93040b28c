"""Publish a folder written by ``attnzoo convert`` to the Hugging Face Hub (huggingface_hub's create_repo + upload_folder).

``attnzoo push DIR --repo ORG/NAME [--revision R] [--private]``: checks that DIR is a converted
repo folder (config.json naming a registered attnzoo architecture, model.safetensors, README.md),
creates the repo if it does not exist (``exist_ok``; ``--private`` for a new one), creates the
branch ``R`` if it is given and is not ``main``, and uploads the folder's three files in one
commit (other files in DIR are not uploaded). All HTTP is
huggingface_hub's: the token comes from ``HF_TOKEN`` / ``hf auth login``, the endpoint from
``HF_ENDPOINT``. Loading afterwards: ``timm.create_model('hf-hub:ORG/NAME', pretrained=True)``
after ``import attnzoo``.
"""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Dict, Optional, Sequence

__all__ = ["add_arguments", "run", "push"]

_REPO = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folder", metavar="DIR", help="a folder written by `attnzoo convert`")
    parser.add_argument("--repo", required=True, metavar="ORG/NAME", help="the Hub model repo to create / update")
    parser.add_argument("--revision", default=None, metavar="R", help="branch to commit to (created from main if missing; default: main)")
    parser.add_argument("--private", action="store_true", help="create the repo private (an existing repo keeps its visibility)")
    parser.add_argument("--message", default=None, help="commit message (default: 'attnzoo convert: <architecture>')")
    parser.add_argument("--debug", action="store_true", help="print the traceback of an internal error (or set ATTNZOO_DEBUG=1)")


def run(args: argparse.Namespace, argv: Sequence[str] = ()) -> int:
    """Exit status 0 (pushed), 2 (not a converted folder, a bad --repo: one line), 1 (the upload
    failed: one line with the HTTP status)."""
    from attnzoo.tools._errors import report

    class UploadFailed(Exception):
        pass

    def body() -> int:
        try:
            url = push(args.folder, args.repo, revision=args.revision, private=args.private, message=args.message)
        except (ValueError, FileNotFoundError):
            raise
        except Exception as exc:  # huggingface_hub's HTTP errors: say what failed, with the status
            status = getattr(getattr(exc, "response", None), "status_code", None)
            text = str(exc).strip().splitlines()
            raise UploadFailed(f"uploading {args.folder!r} to {args.repo!r} failed" + (f" (HTTP {status})" if status else "")
                               + f": {text[0] if text else type(exc).__name__}") from None
        print(f"pushed {args.folder} to {args.repo}" + (f" (revision {args.revision})" if args.revision else "") + f": {url}")
        return 0

    return report("attnzoo push", body, input_errors=(ValueError, FileNotFoundError), explained=(UploadFailed,), debug=args.debug)


def check_folder(folder: str) -> Dict:
    """The folder's config.json, after checking the folder is what ``attnzoo convert`` writes."""
    from attnzoo.tools.convert import OUTPUT_FILES

    path = Path(folder)
    if not path.is_dir():
        raise FileNotFoundError(f"DIR {folder!r} is not a folder")
    missing = [f for f in OUTPUT_FILES if not (path / f).is_file()]
    if missing:
        raise FileNotFoundError(f"DIR {folder!r} lacks {', '.join(missing)}: write it with `attnzoo convert MODEL --checkpoint SRC --out {folder}`")
    try:
        config = json.loads((path / "config.json").read_text())
    except ValueError as exc:
        raise ValueError(f"{folder}/config.json is not JSON: {exc}") from None
    import attnzoo

    arch = config.get("architecture")
    if arch not in attnzoo.list_models():
        raise ValueError(f"{folder}/config.json names architecture {arch!r}, which is not an attnzoo model")
    return config


def push(folder: str, repo: str, *, revision: Optional[str] = None, private: bool = False, message: Optional[str] = None) -> str:
    """Uploads ``folder`` to the Hub model repo ``repo``; returns the commit URL."""
    if not _REPO.match(repo or ""):
        raise ValueError(f"--repo must be ORG/NAME (letters, digits, '-', '_', '.'), got {repo!r}")
    config = check_folder(folder)
    from huggingface_hub import HfApi

    from attnzoo.tools.convert import OUTPUT_FILES

    api = HfApi()
    api.create_repo(repo, repo_type="model", private=True if private else None, exist_ok=True)  # None: the org's default
    if revision and revision != "main":
        api.create_branch(repo, branch=revision, repo_type="model", exist_ok=True)
    info = api.upload_folder(
        folder_path=folder, repo_id=repo, repo_type="model", revision=revision, allow_patterns=list(OUTPUT_FILES),
        commit_message=message or f"attnzoo convert: {config['architecture']}",
    )
    return str(getattr(info, "commit_url", info))
