from __future__ import annotations

from pathlib import Path

import h11

from appliance.vendor import prepare_vendor_dir


def test_vendor_dir_holds_h11_and_is_never_rewritten(tmp_path: Path) -> None:
    first = prepare_vendor_dir(tmp_path)
    assert (first / "h11" / "__init__.py").read_bytes() == Path(h11.__file__).read_bytes()
    assert f"h11=={h11.__version__}" in (first / "VERSIONS").read_text()
    marker = first / "h11" / "_version.py"
    before = marker.stat().st_mtime_ns
    assert prepare_vendor_dir(tmp_path) == first
    assert marker.stat().st_mtime_ns == before
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no staging left behind
