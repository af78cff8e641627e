"""Tests of tools/find_duplicates.py (the repository's copy finder) and the package's check against it."""

import importlib.util
import os
import textwrap

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_spec = importlib.util.spec_from_file_location("find_duplicates", os.path.join(REPO, "tools", "find_duplicates.py"))
fd = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fd)

ORIGINAL = '''
def downsample_labels(label, factor, ignore=255):
    """Nearest-label down-sampling."""
    h, w = label.shape
    out = label[factor // 2 :: factor, factor // 2 :: factor]
    out = out.clone()
    out[out < 0] = ignore
    keep = out != ignore
    count = keep.sum()
    if count == 0:
        return out, 0
    return out, int(count)
'''
# the same function, renamed variables and another docstring and constants
RENAMED = '''
def nearest_down(lbl, s, ign=254):
    """Another docstring."""
    hh, ww = lbl.shape
    res = lbl[s // 3 :: s, s // 3 :: s]
    res = res.clone()
    res[res < 1] = ign
    valid = res != ign
    n = valid.sum()
    if n == 1:
        return res, 1
    return res, int(n)
'''
# same shape of code but other attributes: not a copy
DIFFERENT = ORIGINAL.replace("label.shape", "label.size").replace("out.clone()", "out.contiguous()")


def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


def test_renamed_copy_is_found(tmp_path):
    a = _write(tmp_path, "a.py", ORIGINAL)
    b = _write(tmp_path, "b.py", "import os\n" + RENAMED)
    found = fd.find_duplicates([str(tmp_path)], min_statements=6, min_lines=8)
    assert len(found) == 1  # the function and its statement windows are one finding
    assert sorted(p.split(":")[0] for p in found[0]["places"]) == [a, b]
    assert found[0]["lines"] == 11  # def, docstring and 9 lines of body
    assert fd.main([str(tmp_path)]) == 1


def test_code_with_other_attributes_is_not_a_copy(tmp_path):
    _write(tmp_path, "a.py", ORIGINAL)
    _write(tmp_path, "b.py", DIFFERENT)
    assert fd.find_duplicates([str(tmp_path)]) == []
    assert fd.main([str(tmp_path)]) == 0


def test_short_runs_are_below_the_threshold(tmp_path):
    _write(tmp_path, "a.py", ORIGINAL)
    _write(tmp_path, "b.py", RENAMED)
    assert fd.find_duplicates([str(tmp_path)], min_statements=20, min_lines=40) == []


def test_the_package_has_no_copy():
    found = fd.find_duplicates([os.path.join(REPO, "simformer")])
    assert found == [], "copied code in the package (python tools/find_duplicates.py simformer):\n" + "\n".join(map(str, found))
