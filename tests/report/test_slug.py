"""report.build.slug names each task's figure files and anchors: one name, one file (issue 27)."""
from __future__ import annotations

import pytest

import medpeft.tasks  # noqa: F401  (fills TASKS)
from medpeft.report.build import SLUG_MAX, slug
from medpeft.registry import TASKS


def test_names_only_in_other_scripts_get_different_nonempty_slugs():
    assert slug("病历") != slug("心脏") and slug("病历") and slug("心脏")


@pytest.mark.parametrize("pair", [("Notes", "notes"), ("a+b", "a-b"), ("x!", "x"), ("病历-a", "心脏-a"), ("y" * 80, "y" * 81)])
def test_names_that_differ_only_in_what_the_plain_form_drops_stay_apart(pair):
    assert slug(pair[0]) != slug(pair[1])


@pytest.mark.parametrize("text, expected", [("pubmed-rct", "pubmed-rct"), ("method_args.r", "method-args-r"),
                                            ("user-my notes", "user-my-notes")])
def test_plain_names_and_config_keys_keep_their_slug(text, expected):
    assert slug(text) == expected  # figure names of earlier reports stay as they were


def test_every_registered_task_keeps_its_name_as_slug():
    assert TASKS and all(slug(name) == name for name in TASKS)


@pytest.mark.parametrize("text", ["病历", "Notes", "a" * 300, "=1+1", "../x"])
def test_slugs_are_short_safe_file_name_parts(text):
    assert len(slug(text)) <= SLUG_MAX + 9 and set(slug(text)) <= set("abcdefghijklmnopqrstuvwxyz0123456789-")
