"""The committed ``dvc.lock`` records the committed code and params.

``dvc status`` on this checkout must name no stage whose code, params, command or data files in the
repository differ from what ``dvc.lock`` recorded. What a checkout cannot hold does not count: the
pipeline's outputs (absent until ``dvc repro``) and dependencies that are outputs of other stages. So a
commit that changes a stage's code or params without the ``dvc repro`` that records it fails here.
"""

from __future__ import annotations

from dvc.repo import Repo

from tests.project_fixtures import ROOT, git


def stale_entries(status: dict, tracked: set[str]) -> dict[str, list[str]]:
    """Per stage, what ``dvc status`` reports as changed among the things the repository holds: params, the
    command, and dependencies that are files (or folders of files) tracked in git."""

    def in_repository(path: str) -> bool:
        return path in tracked or any(name.startswith(f"{path}/") for name in tracked)

    stale: dict[str, list[str]] = {}
    for stage, entries in status.items():
        found = []
        for entry in entries:
            if entry == "changed command":
                found.append("command")
            elif isinstance(entry, dict):
                for path, change in entry.get("changed deps", {}).items():
                    if isinstance(change, dict):  # a params file: {param: change}
                        found += [f"param {name} {what}" for name, what in change.items()]
                    elif in_repository(path):
                        found.append(f"{path} {change}")
        if found:
            stale[stage] = found
    return stale


def test_stale_entries_count_what_the_repository_holds():
    status = {
        "train": [
            {"changed deps": {"src/lib": "modified", "data/out": "deleted", "params.yaml": {"train.lr": "modified"}}},
            {"changed outs": {"models/train": "not in cache"}},
            "changed command",
        ],
        "report": [{"changed deps": {"data/out/table.csv": "deleted"}}, {"changed outs": {"report.md": "deleted"}}],
    }
    tracked = {"src/lib/a.py", "src/lib/b.py", "params.yaml", "dvc.yaml"}
    assert stale_entries(status, tracked) == {"train": ["src/lib modified", "param train.lr modified", "command"]}


def test_committed_dvc_lock_matches_the_code_and_params():
    """Fails until ``dvc repro`` has recorded the current code and params in dvc.lock (and it is committed)."""
    tracked = set(git(ROOT, "ls-files").splitlines())
    with Repo(str(ROOT)) as repo:
        status = repo.status()
    stale = stale_entries(status, tracked)
    assert not stale, f"dvc.lock does not record the checked-out code and params; run `dvc repro`: {stale}"
