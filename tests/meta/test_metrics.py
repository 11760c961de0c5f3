"""MetricsLog: appending, and truncating on resume."""

from slstm.meta.metrics import FIELDS, VALIDATION_FIELDS, MetricsLog, read_metrics


def _log_with_rows(path, episodes):
    log = MetricsLog(path, VALIDATION_FIELDS)
    for episode in episodes:
        log.append({"episode": episode, "meta_steps": 2 * episode, "steps": 10,
                    "loss": 0.5 / episode, "error": 0.25})  # fmt: skip
    return log


def test_truncate_keeps_one_line_ending(tmp_path):
    log = _log_with_rows(tmp_path / "validation.csv", [1, 2, 3])
    log.truncate_after(2)
    log.append({"episode": 3, "meta_steps": 6, "steps": 10, "loss": 0.1, "error": 0})
    data = log.path.read_bytes()
    assert b"\r" not in data
    assert data.count(b"\n") == 4  # header and three rows


def test_truncate_drops_later_rows(tmp_path):
    log = _log_with_rows(tmp_path / "validation.csv", [1, 2, 3])
    log.truncate_after(2)
    rows = read_metrics(log.path)
    assert [row["episode"] for row in rows] == ["1", "2"]
    assert rows[1]["loss"] == repr(0.25)


def test_truncate_drops_unreadable_rows(tmp_path, caplog):
    log = _log_with_rows(tmp_path / "validation.csv", [1, 2])
    with open(log.path, "a", encoding="utf-8") as handle:
        handle.write("x,1,10,0.5,0.2\n")  # episode not an integer
        handle.write("2,4,10,0.5,0.2,extra\n")  # a cell too many
        handle.write("1")  # a write cut short
    with caplog.at_level("WARNING", logger="slstm.meta"):
        log.truncate_after(5)
    assert [row["episode"] for row in read_metrics(log.path)] == ["1", "2"]
    for line in (4, 5, 6):
        assert f"dropping unreadable line {line}" in caplog.text


def test_truncate_fills_columns_an_older_file_lacks(tmp_path):
    path = tmp_path / "metrics.csv"
    older = [name for name in FIELDS if name != "steps_per_second"]
    row = {name: "" for name in older} | {"kind": "episode", "episode": "1"}
    path.write_text(",".join(older) + "\n" + ",".join(row[n] for n in older) + "\n")
    MetricsLog(path).truncate_after(1)
    rows = read_metrics(path)
    assert list(rows[0]) == list(FIELDS)
    assert rows[0]["episode"] == "1"
    assert rows[0]["steps_per_second"] == ""
