"""batchrun.sources and batchrun.ranges: what the input list is, and how shards and resume slice it."""

from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batchrun.ranges import RangeIndex, Shard, covering, merge, subtract
from batchrun.sources import resolve_sources
from skutag.errors import InputError


@pytest.fixture()
def tree(tmp_path):
    """root/{a.JPG, b.png, sub/c.jpeg, sub/deep/d.webp, notes.txt, sub/.DS_Store}"""
    root = tmp_path / "root"
    for name in ("a.JPG", "b.png", "sub/c.jpeg", "sub/deep/d.webp", "notes.txt", "sub/.DS_Store"):
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    return root


def ids(inputs) -> list[str]:
    return inputs.ids.to_pylist()


def test_directory_is_recursive_sorted_case_insensitive_and_counts_skipped(tree):
    inputs = resolve_sources([tree])
    assert ids(inputs) == ["a.JPG", "b.png", "sub/c.jpeg", "sub/deep/d.webp"]
    assert inputs.uris.to_pylist()[2] == os.path.abspath(tree / "sub/c.jpeg")
    assert inputs.skipped == 2 and inputs.duplicates == 0


def test_glob_text_list_and_single_image(tree, tmp_path):
    assert ids(resolve_sources([str(tree / "sub" / "**" / "*.*")])) == ["c.jpeg", "deep/d.webp"]
    listing = tmp_path / "list.txt"
    listing.write_text("# products\nroot/b.png\n\nroot/sub/c.jpeg\n")
    inputs = resolve_sources([listing])
    assert ids(inputs) == ["root/b.png", "root/sub/c.jpeg"]
    assert inputs.uris.to_pylist()[0] == os.path.abspath(tree / "b.png")
    assert ids(resolve_sources([tree / "a.JPG"])) == ["a.JPG"]


def test_csv_and_parquet_manifests(tree, tmp_path):
    csv = tmp_path / "m.csv"
    csv.write_text("id,path\nsku-2,root/b.png\nsku-1,root/a.JPG\n")
    inputs = resolve_sources([csv])
    assert ids(inputs) == ["sku-1", "sku-2"]
    assert inputs.uris.to_pylist() == [os.path.abspath(tree / "a.JPG"), os.path.abspath(tree / "b.png")]
    parquet = tmp_path / "m.parquet"
    pq.write_table(pa.table({"uri": [f"file://{tree / 'sub/c.jpeg'}"]}), parquet)
    assert resolve_sources([parquet]).uris.to_pylist() == [os.path.abspath(tree / "sub/c.jpeg")]
    bad = tmp_path / "bad.csv"
    bad.write_text("id,name\n1,x\n")
    with pytest.raises(InputError, match="`path` or `uri`"):
        resolve_sources([bad])
    remote = tmp_path / "remote.csv"
    remote.write_text("uri\ns3://bucket/a.jpg\n")
    with pytest.raises(InputError, match="only local paths"):
        resolve_sources([remote])


def test_duplicates_count_once_and_id_clashes_are_refused(tree, tmp_path):
    inputs = resolve_sources([tree, tree / "b.png", str(tree / "*.png")])
    assert ids(inputs).count("b.png") == 1 and inputs.duplicates == 2 and len(inputs) == 4
    other = tmp_path / "other"
    other.mkdir()
    (other / "a.JPG").write_bytes(b"y")
    with pytest.raises(InputError, match="share the id 'a.JPG'"):
        resolve_sources([tree, other])


def test_missing_sources_and_empty_globs_are_input_errors(tmp_path):
    with pytest.raises(InputError, match="source not found"):
        resolve_sources([tmp_path / "nope"])
    with pytest.raises(InputError, match="matches no files"):
        resolve_sources([str(tmp_path / "*.jpg")])


def test_fingerprint_changes_with_the_list(tree):
    before = resolve_sources([tree]).fingerprint()
    assert resolve_sources([tree]).fingerprint() == before
    (tree / "e.jpg").write_bytes(b"z")
    assert resolve_sources([tree]).fingerprint() != before


@pytest.mark.parametrize("total,count", [(0, 3), (10, 3), (131, 4), (5, 7)])
def test_shards_partition_the_list(total, count):
    slices = [Shard(i, count).slice(total) for i in range(count)]
    assert merge(slices) == ([(0, total)] if total else [])
    assert sum(end - start for start, end in slices) == total


def test_shard_parsing():
    assert Shard.parse("1/4") == Shard(1, 4) and Shard.parse("1/4").tag == "s0001-of-0004"
    assert Shard.parse("0/1").tag == ""
    for bad in ("4/4", "1", "-1/2", "a/b"):
        with pytest.raises(InputError):
            Shard.parse(bad)


def test_pending_ranges_and_their_index():
    done = [(0, 10), (20, 25), (24, 30)]
    left = subtract((5, 40), done)
    assert left == [(10, 20), (30, 40)]
    index = RangeIndex(left)
    assert len(index) == 20 and [index[i] for i in (0, 9, 10, 19)] == [10, 19, 30, 39]
    with pytest.raises(IndexError):
        index[20]
    assert covering([3, 4, 5, 9, 10]) == [(3, 6), (9, 11)]
