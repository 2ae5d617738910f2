"""A stand-in for the Hugging Face Hub, for `stapo-train` and `stapo-eval` run as subprocesses.

With this folder on `PYTHONPATH` and `FAKE_HUB=<folder>` set, `sitecustomize` installs it in every Python process:
the `HfApi` methods that reach the Hub answer from `<folder>/repos/<owner>/<name>/` instead, and each call is
appended to `<folder>/calls.jsonl` (`operation`, `repo_id`, the paths a commit adds or deletes, ...).

- `whoami` answers with a write token; `create_repo` creates the folder.
- `create_commit` writes the added files (and removes the deleted ones). `huggingface_hub` sends folders through its
  streamed hf_xet pipeline when hf_xet is installed; here it takes its single-commit path, as without hf_xet, so every
  upload ends in `create_commit`.
- `_validate_yaml` (the Hub's check of a README's metadata) parses the card with `huggingface_hub`'s own parser.
- `list_repo_files`, `hf_hub_download` and `snapshot_download` read the folder (a missing repository raises
  `RepositoryNotFoundError`).
Revisions are recorded, not kept apart.
"""

import json
import os
import shutil
from pathlib import Path

CALLS_FILE = "calls.jsonl"


def install(root: str) -> None:
    import huggingface_hub.hf_api as hf_api_module
    from huggingface_hub import HfApi, ModelCard
    from huggingface_hub import CommitInfo, CommitOperationAdd, CommitOperationDelete, RepoUrl

    root = Path(root)
    repos = root / "repos"
    repos.mkdir(parents=True, exist_ok=True)

    def record(operation, **details):
        with open(root / CALLS_FILE, "a", encoding="utf-8") as file:
            file.write(json.dumps({"operation": operation, **details}) + "\n")

    def not_found(error_class, message, url):
        import httpx

        return error_class(message, response=httpx.Response(404, request=httpx.Request("GET", url)))

    def repo_folder(repo_id):
        folder = repos / repo_id
        if not folder.is_dir():
            from huggingface_hub.errors import RepositoryNotFoundError

            raise not_found(RepositoryNotFoundError, f"404: repository {repo_id} not found (fake Hub)", repo_id)
        return folder

    def whoami(self, token=None, **kwargs):
        record("whoami")
        return {"name": "tester", "auth": {"accessToken": {"role": "write"}}}

    def create_repo(self, repo_id, *args, **kwargs):
        record("create_repo", repo_id=repo_id)
        (repos / repo_id).mkdir(parents=True, exist_ok=True)
        return RepoUrl(f"{self.endpoint}/{repo_id}", endpoint=self.endpoint)

    def create_commit(self, repo_id, operations, *, commit_message, revision=None, **kwargs):
        folder = repo_folder(repo_id)
        added, deleted = [], []
        for operation in operations:
            target = folder / operation.path_in_repo
            if isinstance(operation, CommitOperationAdd):
                target.parent.mkdir(parents=True, exist_ok=True)
                with operation.as_file() as source, open(target, "wb") as destination:
                    shutil.copyfileobj(source, destination)
                added.append(operation.path_in_repo)
            elif isinstance(operation, CommitOperationDelete):
                shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
                deleted.append(operation.path_in_repo)
        record(
            "create_commit", repo_id=repo_id, revision=revision, message=commit_message, added=sorted(added),
            deleted=sorted(deleted),
        )
        oid = f"{len((root / CALLS_FILE).read_text().splitlines()):040d}"
        return CommitInfo(
            commit_url=f"{self.endpoint}/{repo_id}/commit/{oid}", commit_message=commit_message,
            commit_description="", oid=oid, _endpoint=self.endpoint,
        )

    def validate_yaml(self, content, *, repo_type=None, token=None):
        ModelCard(content)  # raises on metadata that huggingface_hub cannot parse (a malformed model-index)

    def list_repo_files(self, repo_id, *, revision=None, **kwargs):
        record("list_repo_files", repo_id=repo_id, revision=revision)
        folder = repo_folder(repo_id)
        return sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file())

    def hf_hub_download(self, repo_id, filename, *, revision=None, **kwargs):
        record("hf_hub_download", repo_id=repo_id, filename=filename, revision=revision)
        path = repo_folder(repo_id) / filename
        if not path.is_file():
            from huggingface_hub.errors import RemoteEntryNotFoundError

            raise not_found(RemoteEntryNotFoundError, f"404: {filename} not in {repo_id} (fake Hub)", filename)
        return str(path)

    def snapshot_download(self, repo_id, *, revision=None, allow_patterns=None, **kwargs):
        record("snapshot_download", repo_id=repo_id, revision=revision, allow_patterns=allow_patterns)
        return str(repo_folder(repo_id))

    for name, function in {
        "whoami": whoami,
        "create_repo": create_repo,
        "create_commit": create_commit,
        "_validate_yaml": validate_yaml,
        "list_repo_files": list_repo_files,
        "hf_hub_download": hf_hub_download,
        "snapshot_download": snapshot_download,
    }.items():
        setattr(HfApi, name, function)
    hf_api_module.is_xet_available = lambda: False


def calls(root: str | os.PathLike) -> list[dict]:
    path = Path(root) / CALLS_FILE
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
