"""The cause catalogue: stable ids, names, merges, splits and drops kept in causes.toml; run outputs untouched."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys

import numpy as np
import pytest

from rca_gpu.catalogue import CatalogueError, load_catalogue
from rca_gpu.catalogue.causes import CAUSES_FILE, MEMBERS_FILE


@pytest.fixture
def run_copy(catalogue_run, tmp_path):
    return shutil.copytree(catalogue_run, tmp_path / "run")


def _digests(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir() if p.is_file()}


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "rca_gpu.cli", *map(str, args)], capture_output=True, text=True)


@pytest.mark.quality
def test_an_unedited_run_has_one_cause_per_cluster(catalogue_run):
    catalogue = load_catalogue(catalogue_run)
    clusters = catalogue.run.clusters()
    assert catalogue.active == [0, 1, 2] and not catalogue.edited and catalogue.history == []
    np.testing.assert_array_equal(catalogue.cause_of(clusters["id"]), clusters["cluster"])
    table = catalogue.table()
    assert list(table["cause"]) == [0, 1, 2] and (table["size"] == 30).all()
    assert table["stability"].min() >= 0.9 and set(table["origin"]) == {"cluster 0", "cluster 1", "cluster 2"}
    assert catalogue.cause_of(["not an id"]).tolist() == [-1]


def test_edits_go_to_causes_toml_with_stable_ids_and_leave_the_run_alone(run_copy):
    before = _digests(run_copy)
    catalogue = load_catalogue(run_copy)
    sizes = catalogue.sizes()
    catalogue.rename(2, "bar in the middle")
    merged = catalogue.merge([1, 0])
    parts = catalogue.split(2, 2)
    catalogue.drop(parts[1])
    catalogue.save()
    after = _digests(run_copy)
    assert {name: after[name] for name in before} == before  # the run's own files are unchanged
    assert set(after) - set(before) == {CAUSES_FILE, MEMBERS_FILE}
    text = (run_copy / CAUSES_FILE).read_text()
    assert f'run_id = "{catalogue.run_id}"' in text and "merge 0,1 -> 0" in text

    again = load_catalogue(run_copy)
    assert merged == 0 and parts == [3, 4]  # a split takes ids above every id used so far
    assert sorted(again.causes) == [0, 3, 4] and again.active == [0, 3]
    assert again.causes[0].origin == "merge of 0, 1" and again.causes[0].clusters == [0, 1]
    assert again.causes[3].origin == again.causes[4].origin == "split of 2"
    assert again.causes[3].name == "" and again.name(3) == "cause 3"
    got = again.sizes()
    assert got[0] == sizes[0] + sizes[1] and got[3] + got[4] == sizes[2] and got[3] >= got[4]
    clusters = again.run.clusters()
    causes = again.cause_of(clusters["id"])
    assert set(causes[clusters["cluster"] == 2]) == {3, 4}
    # a later split never reuses an id, also after a reload
    assert again.split(0, 2) == [5, 6]


def test_names_can_be_edited_by_hand_and_reset_removes_the_files(run_copy):
    catalogue = load_catalogue(run_copy)
    catalogue.rename(1, "bar at the top")
    catalogue.save()
    path = run_copy / CAUSES_FILE
    path.write_text(path.read_text().replace("bar at the top", "top bar"))
    assert load_catalogue(run_copy).causes[1].name == "top bar"
    catalogue = load_catalogue(run_copy)
    catalogue.reset()
    assert catalogue.save() == [] and not path.exists()
    assert load_catalogue(run_copy).history == []


@pytest.mark.parametrize("damage,message", [
    ("foreign", "belongs to run 0000"),
    ("broken", "Cannot read"),
    ("format", "another version of rca-gpu"),
    ("mismatch", "lists causes"),
])
def test_a_damaged_or_foreign_causes_file_is_refused(run_copy, damage, message):
    catalogue = load_catalogue(run_copy)
    catalogue.rename(0, "x")
    catalogue.save()
    path = run_copy / CAUSES_FILE
    text = path.read_text()
    path.write_text({
        "foreign": text.replace(catalogue.run_id, "0000"),
        "broken": text + "\n[[cause\n",
        "format": text.replace("format = 1", "format = 99"),
        "mismatch": text.replace("id = 2\n", "id = 9\n"),
    }[damage])
    with pytest.raises(CatalogueError, match=message):
        load_catalogue(run_copy)


def test_bad_edits_are_refused_with_the_fix(run_copy):
    catalogue = load_catalogue(run_copy)
    with pytest.raises(CatalogueError, match=r"has no cause 7 \(causes: 0, 1, 2\)"):
        catalogue.drop(7)
    with pytest.raises(CatalogueError, match="at least two different causes"):
        catalogue.merge([1, 1])
    with pytest.raises(CatalogueError, match=r"needs 2 <= parts <= 30"):
        catalogue.split(0, 31)
    from rca_gpu.catalogue.causes import parse_edit

    with pytest.raises(CatalogueError, match=r"The --name value '7' must be CAUSE=NAME, e\.g\. --name 7=\"rotated "
                                             r"left\" \(--name 7= clears the name\)"):
        parse_edit("--name", "7")
    assert parse_edit("--name", "7=") == (7, "") and parse_edit("--split", "5") == (5, None)


def test_an_empty_name_clears_the_name_and_is_recorded_once(run_copy):
    catalogue = load_catalogue(run_copy)
    assert catalogue.rename(0, "  ") is False and catalogue.history == []  # no name yet: nothing to clear
    catalogue.rename(0, "rotated left")
    assert catalogue.rename(0, "") is True and catalogue.causes[0].name == ""
    assert catalogue.history == ["name 0 = 'rotated left'", "clear name 0"]
    catalogue.save()
    assert load_catalogue(run_copy).causes[0].label == "cause 0"


def test_causes_command_clears_a_name_and_refuses_a_name_without_equals(run_copy):
    named = _cli("causes", run_copy, "-q", "--name", "1=top bar")
    assert named.returncode == 0, named.stderr
    cleared = _cli("causes", run_copy, "-q", "--name", "1=")
    assert cleared.returncode == 0, cleared.stderr
    assert "edits written to" in cleared.stdout
    assert load_catalogue(run_copy).causes[1].name == "" and load_catalogue(run_copy).history[-1] == "clear name 1"
    again = _cli("causes", run_copy, "-q", "--name", "1=")
    assert "nothing to change for --name 1=: cause 1 has no name" in again.stdout
    bare = _cli("causes", run_copy, "--name", "1")
    assert bare.returncode == 2 and bare.stderr.startswith("error: The --name value '1' must be CAUSE=NAME")


def test_causes_command_edits_and_shows_the_catalogue(run_copy):
    done = _cli("causes", run_copy, "--name", "0=rotated left", "--merge", "1,2", "--drop", "0")
    assert done.returncode == 0, done.stderr
    assert "rotated left" in done.stdout and "merge of 1, 2" in done.stdout and "dropped" in done.stdout
    assert "edits written to" in done.stdout
    assert (run_copy / "report.html").is_file() and f"rca-gpu report {run_copy}" in done.stdout.replace("\n", "")
    shown = _cli("causes", run_copy)
    assert shown.returncode == 0 and "(edited)" in shown.stdout
    catalogue = load_catalogue(run_copy)
    assert catalogue.active == [1] and catalogue.causes[0].dropped


@pytest.mark.parametrize("args,message", [
    (["--split", "0=x"], "must give the number of parts"),
    (["--name", "zero=x"], "must start with a cause id"),
    (["--merge", "1;2"], "cause ids separated by commas"),
    (["--drop", "5"], "has no cause 5"),
])
def test_causes_command_bad_values_are_one_line_errors(run_copy, args, message):
    done = _cli("causes", run_copy, *args)
    assert done.returncode == 2 and done.stderr.startswith("error: ") and message in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and not (run_copy / CAUSES_FILE).exists()


@pytest.mark.parametrize("width", [80, 100])
def test_the_causes_table_reads_whole_in_a_narrow_terminal(run_copy, width):
    from rich.console import Console

    from rca_gpu.commands.causes import WIDE_TERMINAL, print_causes

    catalogue = load_catalogue(run_copy)
    catalogue.merge([1, 2])
    catalogue.drop(0)
    catalogue.rename(0, "a bright horizontal bar across the top rows of the image, seen at night")
    narrow = Console(width=width, record=True)
    print_causes(catalogue, narrow)
    text = narrow.export_text()
    lines = text.splitlines()
    assert max(map(len, lines)) <= width and "\u2026" not in text  # nothing cut
    header = next(line for line in lines if "cause" in line and "stability" in line)
    for column in ("cause", "size", "stability", "status", "origin", "name"):
        assert f" {column} " in header
    assert "merge of 1, 2" in " ".join(text.split()) and "dropped" in text
    assert "seen at night" in " ".join(text.replace("\u2502", " ").split())  # the long name wraps, whole
    wide = Console(width=WIDE_TERMINAL + 20, record=True)
    print_causes(catalogue, wide)
    wide_text = wide.export_text()
    assert all(f" {column} " in wide_text for column in catalogue.table().columns)


# --- hand edits of causes.toml are type-checked ---

def _cli_app(*args):
    from typer.testing import CliRunner

    from rca_gpu.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.mark.parametrize("old,new,fragments", [
    ("dropped = false", 'dropped = "no"', ["cause 0", 'dropped = "no"', "must be true or false"]),
    ('name = "x"', "name = 42", ["cause 0", "name = 42", "must be a string"]),
    ('name = "x"', 'name = ["a", "b"]', ["cause 0", 'name = ["a", "b"]', "must be a string"]),
    ('origin = "cluster 0"', "origin = 0", ["cause 0", "origin = 0", "must be a string"]),
    ("clusters = [\n    0,\n]", 'clusters = ["0"]', ["cause 0", 'clusters = ["0"]', "list of integers"]),
    ("id = 0", 'id = "0"', ["[[cause]] entry 1", 'id = "0"', "integer >= 0"]),
    ('name = "x"', 'nme = "x"', ["cause 0", "unknown field 'nme'", "a cause has only id, name"]),
    ("next_id = 3", 'next_id = "3"', ['next_id = "3"', "integer >= 0"]),
    ("clusters = [\n    0,\n]", "clusters = [99]", ["cause 0", "clusters = [99]", "the run has no cluster 99"]),
])
def test_causes_toml_fields_of_the_wrong_type_are_refused(run_copy, old, new, fragments):
    catalogue = load_catalogue(run_copy)
    catalogue.rename(0, "x")
    catalogue.save()
    path = run_copy / CAUSES_FILE
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))
    with pytest.raises(CatalogueError) as caught:
        load_catalogue(run_copy)
    message = str(caught.value)
    assert str(path) in message and "Fix it in the file" in message and "\n" not in message
    for fragment in fragments:
        assert fragment in message, message
    # every command that reads the catalogue gives the same one line, exit 2
    from helpers import one_line_error

    one_line_error(_cli_app("causes", run_copy), *fragments)


def test_causes_toml_values_of_the_right_type_still_read(run_copy):
    catalogue = load_catalogue(run_copy)
    catalogue.drop(1)
    catalogue.save()
    path = run_copy / CAUSES_FILE
    path.write_text(path.read_text().replace('name = ""', 'name = "by hand"', 1))
    again = load_catalogue(run_copy)
    assert again.causes[1].dropped is True and again.causes[0].name == "by hand" and again.active == [0, 2]


# --- merges never decide whether a dropped cause is a cause ---

def test_a_merge_of_dropped_and_active_causes_is_refused(run_copy):
    catalogue = load_catalogue(run_copy)
    catalogue.drop(1)
    with pytest.raises(CatalogueError,
                       match=r"--merge value 1,2 mixes dropped causes \(1\) with active ones \(2\)") as caught:
        catalogue.merge([2, 1])
    assert "--restore 1" in str(caught.value) and "--drop 2" in str(caught.value)
    assert sorted(catalogue.causes) == [0, 1, 2] and catalogue.history == ["drop 1"]  # nothing changed
    catalogue.drop(2)
    assert catalogue.merge([1, 2]) == 1 and catalogue.causes[1].dropped  # all dropped: stays dropped
    assert catalogue.active == [0]
    catalogue.restore(1)
    assert catalogue.active == [0, 1]


def test_the_causes_command_refuses_a_mixed_merge_in_one_line(run_copy):
    from helpers import one_line_error

    assert _cli_app("causes", run_copy, "--drop", "0").exit_code == 0
    before = (run_copy / CAUSES_FILE).read_text()
    one_line_error(_cli_app("causes", run_copy, "--merge", "0,1"), "--merge value 0,1", "all active or all dropped",
                   "--restore 0", "--drop 1")
    assert (run_copy / CAUSES_FILE).read_text() == before
    merged = _cli_app("causes", run_copy, "--merge", "1,2")  # both active: merged as before
    assert merged.exit_code == 0 and load_catalogue(run_copy).active == [1]


# --- edits that change nothing are reported, not recorded; --quiet ---

def test_edits_that_change_nothing_are_not_recorded(run_copy):
    done = _cli_app("causes", run_copy, "--restore", "0")
    assert done.exit_code == 0 and "--restore 0: cause 0 is not dropped" in done.output
    assert "nothing to change" in done.output and not (run_copy / CAUSES_FILE).exists()
    assert _cli_app("causes", run_copy, "--drop", "0", "--name", "1=top").exit_code == 0
    history = load_catalogue(run_copy).history
    again = _cli_app("causes", run_copy, "--drop", "0", "--name", "1=top", "--drop", "2")
    assert again.exit_code == 0 and "--drop 0: cause 0 is dropped already" in again.output
    assert "--name 1=top: cause 1 has that name already" in again.output and "edits written to" in again.output
    assert load_catalogue(run_copy).history == [*history, "drop 2"]
    catalogue = load_catalogue(run_copy)
    assert catalogue.drop(0) is False and catalogue.restore(1) is False and catalogue.history == [*history, "drop 2"]


def test_causes_quiet_prints_no_table(run_copy):
    done = _cli_app("causes", run_copy, "-q", "--name", "0=top")
    assert done.exit_code == 0 and "Causes of run" not in done.output and "edits written to" in done.output
    assert _cli_app("causes", run_copy, "--quiet").output.strip() == ""
