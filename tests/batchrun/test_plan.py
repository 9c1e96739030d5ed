"""skutag.listing and batchrun.plan: what the inputs are, the plan that fixes them once, and its shards.

A listing fails whole or not at all: a local folder that cannot be listed fails the plan with exit 75.
"""

from __future__ import annotations

import os
import threading

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from skutag.batchrun.plan import catalog as plan_module
from skutag.batchrun.plan.catalog import PLAN_DIR, ensure_plan, make_plan, read_plan
from skutag.batchrun.plan.shard import Shard

from skutag.errors import InputError
from skutag.listing import ListingCounts, list_sources, local_path
from skutag.synth import render_file
from tests.batchrun.support import SPEC
from tests.support.cli import skutag


@pytest.fixture()
def tree(tmp_path):
    """root/{a.JPG, b.png, sub/c.jpeg, sub/deep/d.webp, notes.txt, sub/.DS_Store, ._a.JPG}"""
    root = tmp_path / "root"
    for name in ("a.JPG", "b.png", "sub/c.jpeg", "sub/deep/d.webp", "notes.txt", "sub/.DS_Store", "._a.JPG"):
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    return root


def planned(sources, out, **kwargs) -> list[tuple[str, str]]:
    plan = make_plan([str(s) for s in sources], str(out), **kwargs)
    rows = []
    for unit in plan.units:
        table = plan.read_unit(unit)
        rows += list(zip(table.column("id").to_pylist(), table.column("uri").to_pylist(), strict=True))
    return rows


def ids(sources, out) -> list[str]:
    return [i for i, _ in planned(sources, out)]


def test_directory_is_recursive_sorted_case_insensitive_and_counts_skipped(tree, tmp_path):
    rows = planned([tree], tmp_path / "out")
    assert [i for i, _ in rows] == ["a.JPG", "b.png", "sub/c.jpeg", "sub/deep/d.webp"]
    assert rows[2][1] == os.path.abspath(tree / "sub/c.jpeg")
    plan = read_plan(str(tmp_path / "out"))
    assert plan.listing["not_image"] == 1 and plan.listing["hidden"] == 2 and plan.duplicates == 0


def test_glob_text_list_and_single_image(tree, tmp_path):
    assert ids([str(tree / "sub" / "**" / "*.*")], tmp_path / "o1") == ["c.jpeg", "deep/d.webp"]
    listing = tmp_path / "list.txt"
    listing.write_text("# products\nroot/b.png\n\nroot/sub/c.jpeg\n")
    rows = planned([listing], tmp_path / "o2")
    assert [i for i, _ in rows] == ["root/b.png", "root/sub/c.jpeg"]
    assert rows[0][1] == os.path.abspath(tree / "b.png")
    assert ids([tree / "a.JPG"], tmp_path / "o3") == ["a.JPG"]


def test_csv_and_parquet_manifests_keep_every_id_even_over_one_file(tree, tmp_path):
    csv = tmp_path / "m.csv"
    csv.write_text("id,path\nsku-2,root/b.png\nsku-1,root/a.JPG\nsku-3,root/b.png\n")
    rows = planned([csv], tmp_path / "o1")
    assert [i for i, _ in rows] == ["sku-1", "sku-2", "sku-3"]
    assert rows[1][1] == rows[2][1] == os.path.abspath(tree / "b.png")
    parquet = tmp_path / "m.parquet"
    pq.write_table(pa.table({"uri": [f"file://{tree / 'sub/c.jpeg'}"], "id": ["x"]}), parquet)
    assert planned([parquet], tmp_path / "o2") == [("x", os.path.abspath(tree / "sub/c.jpeg"))]
    bad = tmp_path / "bad.csv"
    bad.write_text("id,name\n1,x\n")
    with pytest.raises(InputError, match="`path` or `uri`"):
        planned([bad], tmp_path / "o3")


def test_duplicates_count_once_and_id_clashes_are_refused(tree, tmp_path):
    plan = make_plan([str(tree), str(tree / "b.png"), str(tree / "*.png")], str(tmp_path / "o1"))
    assert plan.total == 4 and plan.duplicates == 2
    other = tmp_path / "other"
    other.mkdir()
    (other / "a.JPG").write_bytes(b"y")
    with pytest.raises(InputError, match="share the id 'a.JPG'"):
        make_plan([str(tree), str(other)], str(tmp_path / "o2"))


def test_missing_sources_and_empty_globs_are_input_errors(tmp_path):
    with pytest.raises(InputError, match="source not found"):
        make_plan([str(tmp_path / "nope")], str(tmp_path / "o"))
    with pytest.raises(InputError, match="matches no files"):
        make_plan([str(tmp_path / "*.jpg")], str(tmp_path / "o"))


def test_symlink_loops_are_entered_once_and_names_that_are_not_utf8_get_a_reversible_id(tree, tmp_path):
    os.symlink(tree, tree / "sub" / "loop")  # a link to an ancestor
    os.symlink(tree / "sub", tree / "again")  # the same folder twice
    bad = os.path.join(os.fsencode(tree), b"caf\xe9.jpg")
    with open(bad, "wb") as f:
        f.write(b"bytes")
    counts = ListingCounts()
    entries = list(list_sources([str(tree)], counts))
    assert len(entries) == 5 and counts.revisited_dirs == 2
    odd = next(e for e in entries if e.id.startswith("caf"))
    assert odd.id == "caf%E9.jpg" and odd.uri.startswith("file://")
    assert local_path(odd.uri) == bad
    with open(local_path(odd.uri), "rb") as f:
        assert f.read() == b"bytes"
    odd.uri.encode("utf-8")  # valid UTF-8: Parquet can store it


def test_the_plan_is_made_once_in_units_and_later_calls_read_it(tree, tmp_path):
    out = str(tmp_path / "out")
    first = ensure_plan([str(tree)], out, part_rows=3)
    assert [u.rows for u in first.units] == [3, 1] and first.total == 4
    (tree / "z.jpg").write_bytes(b"new upload")  # the catalog changes: the plan does not
    again = ensure_plan([str(tree)], out)
    assert again.plan_id == first.plan_id and again.total == 4
    with pytest.raises(InputError, match="other sources"):
        ensure_plan([str(tree / "sub")], out)
    with pytest.raises(InputError, match="--part-rows 3"):
        ensure_plan([str(tree)], out, part_rows=5)


def test_plans_made_at_the_same_moment_agree_on_one(tree, tmp_path, monkeypatch):
    out = str(tmp_path / "out")
    barrier = threading.Barrier(2)
    real = plan_module._write_units

    def slow_write(*args, **kwargs):
        result = real(*args, **kwargs)
        barrier.wait(timeout=30)  # both have listed and written their units before either commits
        return result

    monkeypatch.setattr(plan_module, "_write_units", slow_write)
    plans: list = []
    threads = [threading.Thread(target=lambda: plans.append(make_plan([str(tree)], out))) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(plans) == 2 and plans[0].plan_id == plans[1].plan_id
    assert [u.file for u in plans[0].units] == [u.file for u in plans[1].units]
    files = sorted(os.listdir(tmp_path / "out" / "_plan"))
    assert files == sorted(["_PLAN", *(u.file for u in plans[0].units)])  # the loser cleaned up


def test_external_sort_spills_and_merges_in_order(tmp_path, monkeypatch):
    monkeypatch.setattr(plan_module, "SORT_CHUNK", 7)
    listing = tmp_path / "list.csv"
    names = [f"sku-{(i * 37) % 101:03d}" for i in range(101)]
    listing.write_text("id,path\n" + "".join(f"{n},{n}.jpg\n" for n in names))
    rows = planned([listing], tmp_path / "out", part_rows=10)
    assert [i for i, _ in rows] == sorted(names)


def test_manifest_labels_travel_in_the_plan_through_the_external_sort(tree, tmp_path, monkeypatch):
    monkeypatch.setattr(plan_module, "SORT_CHUNK", 7)
    listing = tmp_path / "list.csv"
    names = [f"sku-{(i * 37) % 41:03d}" for i in range(41)]
    # every row twice (an exact repeat the plan keeps once), once with a label and once without:
    # merging spilled runs must never compare a None label with a string
    lines = [f"{n},{n}.jpg,{'shoe' if i % 3 else ''}" for i, n in enumerate(names)]
    lines += [f"{n},{n}.jpg," for n in names]
    listing.write_text("id,path,label\n" + "\n".join(lines) + "\n")
    plan = make_plan([str(listing)], str(tmp_path / "out"), part_rows=10)
    assert (plan.total, plan.duplicates) == (41, 41)
    table = pa.concat_tables(plan.read_unit(unit) for unit in plan.units)
    assert table.column("id").to_pylist() == sorted(names)
    # the first listing of a repeated row is kept: here the labelled one
    want = {n: "shoe" if i % 3 else None for i, n in enumerate(names)}
    assert dict(zip(table.column("id").to_pylist(), table.column("label").to_pylist(), strict=True)) == want
    assert plan.labelled == read_plan(str(tmp_path / "out")).labelled == 27
    assert make_plan([str(tree)], str(tmp_path / "dir")).labelled == 0  # folders carry no labels


@pytest.mark.parametrize("units,count", [(1, 3), (10, 3), (131, 4), (5, 7)])
def test_shards_partition_the_units(units, count):
    from skutag.batchrun.plan.catalog import Plan, Unit

    plan = Plan("o", "id", [], 1, units, 0, {}, [Unit(i, f"f{i}", 1, i, "a", "a") for i in range(units)])
    slices = [plan.shard_units(i, count) for i in range(count)]
    assert [u.number for s in slices for u in s] == list(range(units))


def test_shard_parsing():
    assert Shard.parse("1/4") == Shard(1, 4) and Shard.parse("1/4").tag == "s0001-of-0004"
    assert Shard.parse("0/1").tag == ""
    for bad in ("4/4", "1", "-1/2", "a/b"):
        with pytest.raises(InputError):
            Shard.parse(bad)


def test_a_plan_on_another_filesystem_than_the_scratch_space(tree, tmp_path, monkeypatch):
    """The plan's units are written in a scratch folder first; OUT may be on another filesystem."""
    import tempfile

    other = "/dev/shm"
    if not os.path.isdir(other) or os.stat(other).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("needs two filesystems")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # scratch here, OUT there
    out = tempfile.mkdtemp(dir=other)
    try:
        plan = make_plan([str(tree)], out)
        assert plan.total == 4 and [u.rows for u in plan.units] == [4]
    finally:
        import shutil

        shutil.rmtree(out)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads a folder whatever its mode")
def test_an_unreadable_subfolder_fails_the_plan_with_exit_75_and_publishes_nothing(tmp_path):
    catalog = tmp_path / "catalog"
    for folder in ("a", "b"):
        (catalog / folder).mkdir(parents=True)
        (catalog / folder / "x.jpg").write_bytes(render_file(SPEC, 0)[1])
    (catalog / "b").chmod(0)
    try:
        result = skutag("plan", catalog, "--out", tmp_path / "out")
    finally:
        (catalog / "b").chmod(0o755)
    assert result.returncode == 75, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and str(catalog / "b") in result.stderr
    assert not (tmp_path / "out" / PLAN_DIR).exists() or not list((tmp_path / "out" / PLAN_DIR).iterdir())


def test_a_folder_that_cannot_be_listed_is_an_error_not_an_empty_folder(tmp_path):
    """The listing itself, as root too: a folder that vanishes (or is denied) raises ListingError."""
    from skutag.errors import ListingError
    from skutag.listing import walk_images

    catalog = tmp_path / "catalog"
    (catalog / "a").mkdir(parents=True)
    (catalog / "a" / "x.jpg").write_bytes(b"x")
    (catalog / "c").mkdir()
    (catalog / "c" / "y.jpg").write_bytes(b"y")
    listing = walk_images(catalog)
    first = next(listing)
    (catalog / "c" / "y.jpg").unlink()
    (catalog / "c").rmdir()  # vanishes between the parent's listing and its own
    with pytest.raises(ListingError, match="cannot list .*catalog/c"):
        list(listing)
    assert first.id == "a/x.jpg"
