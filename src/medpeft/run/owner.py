"""Which grid file owns a runs folder: runs/<name>/grid.json records the grid file whose runs it holds, so two
grid files that share a `name:` are never mixed in one folder and one report."""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from medpeft.errors import ConfigError
from medpeft.run.record import write_json

log = logging.getLogger("medpeft")

GRID_MARKER = "grid.json"  # in runs/<name>/: the grid file whose runs the folder holds


def claim_grid_dir(grid_dir: Path, name: str, grid_file: Path | None, record: bool = True) -> None:
    """Refuse to run `grid_file` into a folder that another grid file of the same `name:` made: the two
    grids' runs would be mixed in one folder and one report without a word. The first run records its
    file in grid.json; the same file (edited or not) runs on. A grid built in code (no file), a folder
    from a medpeft older than the record, and a recorded file that is gone (moved, renamed) are let through.
    `record=False` only checks (before the plan's checks, so a grid refused there writes nothing)."""
    if grid_file is None:
        return
    grid_file, marker = Path(grid_file).resolve(), Path(grid_dir) / GRID_MARKER
    recorded = recorded_grid_file(marker)
    if recorded is not None and recorded != grid_file:
        if recorded.is_file() and not os.path.samefile(recorded, grid_file):
            raise ConfigError(f"{grid_dir} holds the runs of grid file {recorded} (recorded in {marker}), and {grid_file} "
                              f"has the same name {name!r}: running it would mix the two grids' runs in one folder and one "
                              f"report. Give one of them another `name:`, or run it with another --runs-dir.")
        if not recorded.is_file():
            log.warning("%s was made by grid file %s, which is gone; it now holds the runs of %s", grid_dir, recorded, grid_file)
    if recorded != grid_file and record:
        try:
            write_json(marker, {"name": name, "grid_file": str(grid_file)})
        except OSError as err:  # a read-only folder: the grid's own writes report it; the record is a safeguard
            log.warning("could not record the grid file in %s (%s)", marker, err)


def recorded_grid_file(marker: Path) -> Path | None:
    """The grid file recorded in a grid folder's grid.json; None without one (or an unreadable one)."""
    try:
        data = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return Path(data["grid_file"]) if isinstance(data, dict) and isinstance(data.get("grid_file"), str) else None
