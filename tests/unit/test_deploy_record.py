"""The deploy record's pieces that need no host: provenance of a run, drift from sha256sum output,
the status line an operator reads, and which fields make a record change."""

from __future__ import annotations

import subprocess

from deploy import provenance, status
from roles.record import identity


def test_provenance_names_the_commit_and_marks_a_dirty_tree(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    repo.mkdir()
    git = lambda *a: subprocess.run(["git", "-C", str(repo), *a], check=True, capture_output=True, text=True)  # noqa: E731
    git("init", "-q")
    (repo / "f").write_text("one\n")
    git("add", "f")
    git("-c", "user.email=t@example.org", "-c", "user.name=t", "commit", "-qm", "one")
    monkeypatch.setattr(provenance, "REPO_ROOT", repo)
    clean = provenance.run_facts()
    assert clean["commit"] == git("rev-parse", "HEAD").stdout.strip() and clean["dirty"] is False
    assert clean["operator"] and clean["started"].endswith("+00:00")
    (repo / "f").write_text("two\n")
    assert provenance.run_facts()["dirty"] is True
    monkeypatch.setattr(provenance, "REPO_ROOT", tmp_path / "not-a-repo")
    assert provenance.run_facts()["commit"] is None


def test_drift_is_every_managed_file_changed_or_gone(tmp_path):
    a, b, c = (tmp_path / n for n in "abc")
    for f in (a, b, c):
        f.write_text(f.name)
    sums = lambda: subprocess.run(f"sha256sum {a} {b} {c} 2>/dev/null; true", shell=True,  # noqa: E731
                                  capture_output=True, text=True).stdout.splitlines()
    record = {"files": {str(p): line.split()[0] for p, line in zip((a, b, c), sums())}}
    assert status.drift(record, sums()) == []
    b.write_text("edited")
    c.unlink()
    assert status.drift(record, sums()) == [str(b), str(c)]


def test_the_status_line_says_commit_dirty_release_and_drift():
    record = {"commit": "0123456789abcdef", "dirty": True, "bot_release": "0.1.0-abc", "operator": "me@ctl",
              "deployed_at": "2026-12-03T10:00:00+00:00", "files": {"/etc/x": "d"}}
    line = status.render_row(status.HostStatus("h1", record, ["/etc/x"]))
    for part in ("0123456789ab (dirty)", "bot 0.1.0-abc", "me@ctl", "drifted", "/etc/x"):
        assert part in line
    assert "no deploy record" in status.render_row(status.HostStatus("h2"))
    assert not status.HostStatus("h3", error="unreachable: x").ok


def test_time_and_operator_alone_do_not_make_a_new_record():
    base = {"hardkit": "0.1.0", "commit": "c", "dirty": False, "bot_release": "r", "files": {"/a": "1"}}
    later = {**base, "deployed_at": "later", "operator": "someone else"}
    assert identity(base) == identity(later)
    assert identity(base) != identity({**base, "files": {"/a": "2"}})
    assert identity(base) != identity({**base, "dirty": True})
