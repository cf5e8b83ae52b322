"""Atomic writes and fingerprints: one helper for every temporary file, unique across hosts and processes."""
from __future__ import annotations

import os
import socket

from medpeft.files import file_fingerprint, folder_fingerprint, temporary_path


def test_temporary_names_are_unique_per_host_process_and_call(tmp_path):
    target = tmp_path / "report-x.png"
    a, b = temporary_path(target), temporary_path(target)
    assert a != b and a.parent == b.parent == tmp_path  # two writers in one process never share a file
    assert a.name.startswith(".report-x.png.") and socket.gethostname() in a.name and str(os.getpid()) in a.name


def test_plots_and_the_model_cache_use_the_shared_helper():
    """They used the pid alone, which two shards on two nodes of one filesystem can share."""
    import inspect

    from medpeft import models
    from medpeft.report import plots

    assert "temporary_path(" in inspect.getsource(plots.save_figure)
    assert "temporary_path(" in inspect.getsource(models.build_cached)


def test_fingerprints_follow_the_content(tmp_path):
    path = tmp_path / "notes.csv"
    path.write_text("text,label\na,b\n")
    first = file_fingerprint(path)
    assert file_fingerprint(path) == first
    path.write_text("text,label\na,c\n")
    assert file_fingerprint(path) != first
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    before = folder_fingerprint(tmp_path / "model")
    (tmp_path / "model" / "config.json").write_text('{"a": 1}')
    assert folder_fingerprint(tmp_path / "model") != before
