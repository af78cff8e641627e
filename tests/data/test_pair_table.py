"""Partner table for cross-image pairs (spec §1.3, §11) against a brute-force definition."""
import os

import numpy as np
import pytest
from PIL import Image

from simformer.data import pair_table as pt
from simformer.data.pair_table import PairTable, build_presence_matrix, load_or_build_pair_table, parse_pair_type

BIG_CAPS = (1000, 1000, 1000)


def brute_force(presence, novel_ids):
    """The lists by their definition, with plain Python sets and a double loop."""
    novel = set(novel_ids)
    sets = [
        ({c for c in np.flatnonzero(row) if c in novel}, {c for c in np.flatnonzero(row) if c not in novel})
        for row in presence
    ]
    out = []
    for i, (novel_i, base_i) in enumerate(sets):
        others = [(j, n, b) for j, (n, b) in enumerate(sets) if j != i]
        out.append(
            {
                "deconf": {c: [j for j, n, _ in others if novel_i & n == {c}] for c in sorted(novel_i)},
                "novel_common": [j for j, n, _ in others if novel_i & n],
                "base_common": [j for j, _, b in others if base_i & b],
            }
        )
    return out


def assert_matches(table, expected, novel_ids):
    assert table.num_images == len(expected)
    for i, lists in enumerate(expected):
        assert table.novel_classes(i).tolist() == sorted(lists["deconf"])
        for c in novel_ids:
            assert table.candidates(i, "deconf", c).tolist() == lists["deconf"].get(c, [])
        assert table.candidates(i, "novel_common").tolist() == lists["novel_common"]
        assert table.candidates(i, "base_common").tolist() == lists["base_common"]


@pytest.fixture(scope="module")
def random_dataset():
    rng = np.random.default_rng(0)
    presence = rng.random((60, 12)) < 0.3
    presence[5] = False  # an image without any class: must pair with itself
    presence[6] = False
    presence[6, 11] = True  # a base class nobody else has (forced unique below)
    presence[np.arange(60) != 6, 11] = False
    return presence, [1, 4, 7, 9]


@pytest.mark.parametrize("chunk_rows", [None, 1, 7])
def test_matches_brute_force(random_dataset, chunk_rows):
    presence, novel = random_dataset
    table = PairTable.build(presence, novel, caps=BIG_CAPS, seed=3, chunk_rows=chunk_rows)
    assert_matches(table, brute_force(presence, novel), novel)
    assert table.candidates(0, "base_common").dtype == np.int32


def test_no_novel_or_no_base_classes():
    presence = np.random.default_rng(1).random((15, 4)) < 0.5
    for novel in ([], [0, 1, 2, 3]):
        table = PairTable.build(presence, novel, caps=BIG_CAPS)
        assert_matches(table, brute_force(presence, novel), novel)


def test_caps_subsample_uniformly_and_deterministically(random_dataset):
    presence, novel = random_dataset
    expected = brute_force(presence, novel)
    caps = (3, 4, 5)
    table = PairTable.build(presence, novel, caps=caps, seed=0, chunk_rows=13)
    again = PairTable.build(presence, novel, caps=caps, seed=0, chunk_rows=13)
    other = PairTable.build(presence, novel, caps=caps, seed=1, chunk_rows=13)
    for i, lists in enumerate(expected):
        full_lists = [("deconf", c, cands, caps[0]) for c, cands in lists["deconf"].items()]
        full_lists += [("novel_common", None, lists["novel_common"], caps[1])]
        full_lists += [("base_common", None, lists["base_common"], caps[2])]
        for kind, c, full, cap in full_lists:
            got = table.candidates(i, kind, c).tolist()
            assert len(got) == min(cap, len(full)) and set(got) <= set(full)
            assert got == sorted(got)
            assert got == again.candidates(i, kind, c).tolist()
    differs = any(
        table.candidates(i, "base_common").tolist() != other.candidates(i, "base_common").tolist() for i in range(60)
    )
    assert differs


def test_subsample_is_uniform():
    # image 0 shares base class 0 with 10 images and novel class 1 with 10 others; caps keep 3 of each.
    presence = np.zeros((21, 2), dtype=bool)
    presence[:11, 0] = True
    presence[0, 1] = True
    presence[11:, 1] = True
    hits = {"deconf": np.zeros(21), "base_common": np.zeros(21)}
    runs = 400
    for seed in range(runs):
        table = PairTable.build(presence, [1], caps=(3, 3, 3), seed=seed)
        hits["deconf"][table.candidates(0, "deconf", 1)] += 1
        hits["base_common"][table.candidates(0, "base_common")] += 1
    np.testing.assert_allclose(hits["base_common"][1:11] / runs, 0.3, atol=0.1)
    np.testing.assert_allclose(hits["deconf"][11:] / runs, 0.3, atol=0.1)


def test_reindexed_and_state_dict_round_trip(random_dataset):
    presence, novel = random_dataset
    table = PairTable.build(presence, novel, caps=BIG_CAPS)
    order = np.random.default_rng(2).permutation(60)
    permuted = table.reindexed(order)
    assert_matches(permuted, brute_force(presence[order], novel), novel)
    restored = PairTable.from_state_dict(table.state_dict())
    assert_matches(restored, brute_force(presence, novel), novel)
    with pytest.raises(ValueError, match="permutation"):
        table.reindexed([0] * 60)


# ------------------------------------------------------------------------------------------------
# sampling rules
# ------------------------------------------------------------------------------------------------
# novel classes {0, 1, 2}, base classes {3, 4}
TOY = [
    {0, 1},  # 0: deconf(0) = [1, 2, 8], deconf(1) = [3, 7]
    {0},  # 1
    {0},  # 2
    {1},  # 3
    set(),  # 4: nothing -> self
    {3},  # 5: base only
    {3},  # 6
    {1, 2},  # 7: deconf(1) = [0, 3], deconf(2) = [] (nobody else has 2)
    {0, 3},  # 8: one novel class
]


def toy_table(caps=(500, 50, 50)):
    presence = np.zeros((len(TOY), 5), dtype=bool)
    for i, classes in enumerate(TOY):
        presence[i, list(classes)] = True
    return PairTable.build(presence, [0, 1, 2], caps=caps, seed=0)


def draw(table, i, pair_type, n=300, seed=0, **kwargs):
    rng = np.random.default_rng(seed)
    return {table.sample_partner(i, pair_type, rng, **kwargs) for _ in range(n)}


def test_toy_lists():
    table = toy_table()
    assert table.candidates(0, "deconf", 0).tolist() == [1, 2, 8]
    assert table.candidates(0, "deconf", 1).tolist() == [3, 7]
    assert table.candidates(7, "deconf", 2).tolist() == []
    assert table.candidates(0, "deconf", 2).tolist() == []  # class not in image 0
    assert table.candidates(5, "base_common").tolist() == [6, 8]


def test_deconf_rules():
    table = toy_table()
    assert draw(table, 0, "Deconf1") == {3, 7}  # p = 1: the class with fewer candidates
    assert draw(table, 0, "Deconf0") == {1, 2, 3, 7, 8}  # p = 0: uniform over classes, then partners
    assert draw(table, 7, "Deconf1") == {0, 3}  # empty list counts as the cap, so class 1 is rarer
    assert draw(table, 7, "Deconf0") == {0, 3, 7}  # class 2 chosen -> empty deconf list -> self
    assert draw(table, 8, "Deconf0.01") == {0, 1, 2}  # one novel class: novel-common list
    assert draw(table, 5, "Deconf0.01") == {6, 8}  # no novel class: base-common list
    assert draw(table, 4, "Deconf0.01") == {4}  # nothing shared: self


def test_deconf_single_option():
    table = toy_table(caps=(500, 1, 50))  # novel-common keeps a single partner
    (only,) = table.candidates(1, "novel_common").tolist()
    assert draw(table, 1, "Deconf0.01") == {only}
    assert draw(table, 1, "Deconf0.01", deconf_single=True) == {0, 2, 8}


def test_other_pair_types():
    table = toy_table()
    assert draw(table, 0, "Rand", n=500) == set(range(len(TOY))) - {0}
    assert draw(table, 5, "BInter") == {6, 8} == draw(table, 5, "NInter")
    assert draw(table, 8, "BInter") == {5, 6}  # base-common first
    assert draw(table, 8, "NInter") == {0, 1, 2}  # novel-common first
    assert draw(table, 1, "BInter") == {0, 2, 8}  # no base class: falls back to novel-common
    assert draw(table, 4, "BInter") == draw(table, 4, "NInter") == {4}


def allowed_partners(lists, i, mode):
    """The rule of spec §1.3 (lists exclude i; "non-empty" = official "≥ 2 entries incl. i")."""
    nc, bc = set(lists["novel_common"]), set(lists["base_common"])
    if mode == "Deconf":
        if len(lists["deconf"]) >= 2:
            out = set().union(*map(set, lists["deconf"].values()))
            return out | ({i} if any(not v for v in lists["deconf"].values()) else set())
        order = (nc, bc)
    else:
        order = (bc, nc) if mode == "BInter" else (nc, bc)
    return next((s for s in order if s), {i})


@pytest.mark.parametrize("pair_type", ["Deconf0.3", "BInter", "NInter"])
def test_partners_follow_the_rule(random_dataset, pair_type):
    presence, novel = random_dataset
    table = PairTable.build(presence, novel, caps=BIG_CAPS)
    before = {name: getattr(table, name).copy() for name in PairTable._ARRAYS}
    rng = np.random.default_rng(0)
    mode = parse_pair_type(pair_type)[0]
    for i, lists in enumerate(brute_force(presence, novel)):
        allowed = allowed_partners(lists, i, mode)
        partners = {table.sample_partner(i, pair_type, rng) for _ in range(40)}
        assert partners <= allowed
        assert (i in partners) == (i in allowed)
    assert table.sample_partner(5, pair_type, rng) == 5
    for name, array in before.items():  # sampling never mutates the stored lists
        np.testing.assert_array_equal(getattr(table, name), array)
    with pytest.raises(ValueError):
        table.candidates(0, "base_common")[0] = 1


def test_bad_arguments():
    table = toy_table()
    for bad in ("Deconf", "Deconf1.5", "deconf0.1", "Random"):
        with pytest.raises(ValueError, match="PAIR_TYPE"):
            table.sample_partner(0, bad, np.random.default_rng(0))
    assert parse_pair_type("Deconf0.01") == ("Deconf", 0.01)
    with pytest.raises(ValueError, match="needs cls"):
        table.candidates(0, "deconf")
    with pytest.raises(ValueError, match="unknown kind"):
        table.candidates(0, "novel")
    with pytest.raises(IndexError):
        table.candidates(len(TOY), "base_common")
    with pytest.raises(ValueError, match="novel_ids"):
        PairTable.build(np.zeros((3, 4), bool), [4])


# ------------------------------------------------------------------------------------------------
# presence matrix and cache
# ------------------------------------------------------------------------------------------------
def write_labels(folder, presence, seed=0):
    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    paths = []
    for i, row in enumerate(presence):
        classes = np.concatenate([np.flatnonzero(row), [255]])
        label = rng.choice(classes, size=(6, 7)).astype(np.uint8)
        label.ravel()[: len(classes)] = classes  # every listed class really occurs
        path = os.path.join(folder, f"{i:03d}.png")
        Image.fromarray(label).save(path)
        paths.append(path)
    return paths


def test_build_presence_matrix(tmp_path, random_dataset):
    presence, _ = random_dataset
    paths = write_labels(tmp_path / "labels", presence[:20])
    np.testing.assert_array_equal(build_presence_matrix(paths, 12), presence[:20])
    np.testing.assert_array_equal(build_presence_matrix(paths, 12, workers=2), presence[:20])
    bad = tmp_path / "bad.png"
    Image.fromarray(np.full((3, 3), 40, np.uint8)).save(bad)
    with pytest.raises(ValueError, match=r"bad\.png.*\[40\]"):
        build_presence_matrix(paths + [str(bad)], 12)


def test_cache_hit_reorder_and_rebuild(tmp_path, random_dataset, monkeypatch):
    presence, novel = random_dataset
    presence = presence[:25]
    paths = write_labels(tmp_path / "labels", presence)
    dicts = [{"file_name": p.replace(".png", ".jpg"), "sem_seg_file_name": p} for p in paths]
    cache = tmp_path / "cache"
    kwargs = dict(num_classes=12, novel_ids=novel, cache_dir=str(cache), caps=BIG_CAPS, seed=0)

    table = load_or_build_pair_table(dicts, **kwargs)
    assert_matches(table, brute_force(presence, novel), novel)
    files = sorted(os.listdir(cache))
    assert len(files) == 1 and files[0].startswith("pair_table_") and files[0].endswith(".npz")

    def no_build(*args, **kw):
        raise AssertionError("the cached table should have been used")

    monkeypatch.setattr(pt.PairTable, "build", no_build)
    assert_matches(load_or_build_pair_table(dicts, **kwargs), brute_force(presence, novel), novel)
    reversed_table = load_or_build_pair_table(dicts[::-1], **kwargs)  # same files, other order
    assert_matches(reversed_table, brute_force(presence[::-1], novel), novel)
    monkeypatch.undo()

    # a changed label file (new content and mtime) gives a new fingerprint and a rebuild
    presence = presence.copy()
    presence[3] = False
    presence[3, [1, 2]] = True
    write_labels(tmp_path / "labels", presence)
    stat = os.stat(paths[3])
    os.utime(paths[3], ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert_matches(load_or_build_pair_table(dicts, **kwargs), brute_force(presence, novel), novel)
    assert len(os.listdir(cache)) == 2
    load_or_build_pair_table(dicts, **{**kwargs, "novel_ids": [1, 4]})
    assert len(os.listdir(cache)) == 3
    assert not [f for f in os.listdir(cache) if f.endswith(".tmp")]


def test_corrupt_cache_is_rebuilt(tmp_path, random_dataset, caplog):
    presence, novel = random_dataset
    paths = write_labels(tmp_path / "labels", presence[:10])
    dicts = [{"sem_seg_file_name": p} for p in paths]
    kwargs = dict(num_classes=12, novel_ids=novel, cache_dir=str(tmp_path / "cache"), caps=BIG_CAPS)
    load_or_build_pair_table(dicts, **kwargs)
    (cached,) = (tmp_path / "cache").iterdir()
    for garbage in (b"", b"PK\x03\x04 truncated", b"not an npz"):
        cached.write_bytes(garbage)
        assert_matches(load_or_build_pair_table(dicts, **kwargs), brute_force(presence[:10], novel), novel)
        assert "cannot read cache" in caplog.text
        caplog.clear()
