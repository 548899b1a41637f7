"""`wscswap bench` end to end, on tiny shapes."""
import csv

import pytest

from wscswap_fast.cli import main


def test_bench_quick_writes_table_csv_and_markdown(tmp_path, capsys):
    csv_path, md_path = tmp_path / "bench.csv", tmp_path / "bench.md"
    assert main(["bench", "--quick", "--device", "cpu", "--csv", str(csv_path), "--markdown", str(md_path)]) == 0
    printed = capsys.readouterr().out
    assert "copy bandwidth" in printed and "vs compile" in printed
    rows = list(csv.DictReader(open(csv_path)))
    seen = {(r["op"], r["backend"]) for r in rows}
    for expected in [("blend", "eager"), ("blend", "torch.compile"), ("blend", "cpu"),
                     ("paste_faces", "opencv"), ("paste_faces", "cpu")]:
        assert expected in seen
    for r in rows:
        assert float(r["median_ms"]) > 0 and r["device"] == "cpu"
    assert "| op |" in md_path.read_text()


def test_bench_rejects_unknown_op_and_device():
    with pytest.raises(SystemExit, match="unknown op"):
        main(["bench", "--ops", "nope"])
    with pytest.raises(SystemExit, match="--device must be"):
        main(["bench", "--device", "tpu"])
