"""MEDLINE parsing helpers that need no asset: which record of a citation is kept."""
from __future__ import annotations


def test_latest_versions_keeps_the_highest_version_and_the_last_of_equals():
    from medpeft.data.medline import latest_versions

    def citation(pmid, version, title):
        return {"pmid": pmid, "version": version, "title": title}

    citations = [citation("1", 1, "old"), citation("2", 2, "v2"), citation("1", 1, "revised"),
                 citation("2", 1, "v1 after v2"), citation("3", 1, "only")]
    # An update file revises a citation under the same version: the later record wins.
    assert [c["title"] for c in latest_versions(citations)] == ["revised", "v2", "only"]
