"""The record as data: the README's and docs/' tables are generated from docs/results.yaml and the cards, and a
table or an accuracy that drifts from its data fails here (the generator's check, in the default suite)."""

import shutil
from pathlib import Path

import pytest
import yaml

from metalearn import record
from metalearn.errors import MetalearnError

REPO = Path(__file__).resolve().parent.parent


def copy_docs(tmp_path: Path) -> Path:
    for name in record.DOCUMENTS + ("docs/results.yaml",):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / name, tmp_path / name)
    shutil.copytree(REPO / "configs" / "experiment", tmp_path / "configs" / "experiment")
    return tmp_path


def test_the_repository_documents_agree_with_their_data():
    assert record.check() == []


def test_every_table_of_the_record_is_shown_and_every_block_names_a_table():
    rec = record.load()
    shown = "".join((REPO / d).read_text() for d in record.DOCUMENTS)
    for name in rec.tables:
        assert f"<!-- record:table {name} -->" in shown
    assert "<!-- record:cards -->" in shown
    assert len(rec.rows) > 200  # the old notebook's tables all became rows


def test_a_hand_edited_table_cell_fails_and_names_the_table(tmp_path):
    root = copy_docs(tmp_path)
    doc = root / "docs/results.md"
    text = doc.read_text()
    start = text.index("<!-- record:table omniglot_small -->")
    edited = text[:start] + text[start:].replace("96.41 ± 0.41%", "96.91 ± 0.41%", 1)
    doc.write_text(edited)
    problems = record.check(root)
    assert any("'table omniglot_small' differs from its data" in p for p in problems)


def test_a_prose_accuracy_not_in_the_record_fails_and_one_in_it_passes(tmp_path):
    root = copy_docs(tmp_path)
    readme = root / "README.md"
    readme.write_text(readme.read_text() + "\nProtoNet scores 96.41 ± 0.41% here (a figure of the record).\n")
    assert record.check(root) == []
    readme.write_text(readme.read_text() + "\nAnd 97.77 ± 0.12% there, typed by hand; also 12.34%.\n")
    problems = record.check(root)
    assert "README.md: 97.77 ± 0.12% is not a figure of docs/results.yaml or of a card" in problems
    assert "README.md: 12.34% is not a figure of docs/results.yaml or of a card" in problems


def test_a_preset_header_quoting_a_figure_of_no_record_fails(tmp_path):
    root = copy_docs(tmp_path)
    preset = root / "configs/experiment/protonet_omniglot_small.yaml"
    preset.write_text("# measured 97.12 ± 0.33% once\n" + preset.read_text())
    assert record.check(root) == [
        "configs/experiment/protonet_omniglot_small.yaml: 97.12 ± 0.33% is not a figure of docs/results.yaml or of a card"]


def test_a_changed_measurement_fails_until_the_tables_are_regenerated(tmp_path):
    root = copy_docs(tmp_path)
    path = root / "docs/results.yaml"
    data = yaml.safe_load(path.read_text())
    row = next(r for r in data["measurements"] if r["id"] == "omniglot_small.01")
    row["scores"]["5w1s"]["acc"] = 96.44
    path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False))
    assert any("differs from its data" in p for p in record.check(root))
    changed = record.write(root)
    assert "docs/results.md" in changed and "README.md" in changed  # the README's methods table quotes that row
    assert record.check(root) == []
    assert "96.44 ± 0.41%" in (root / "docs/results.md").read_text()
    assert "96.44 ± 0.41%" in (root / "README.md").read_text()


@pytest.mark.parametrize("change, message", [
    (lambda r: r.update(wal="1 min"), "unknown key 'wal'"),
    (lambda r: r["scores"]["5w1s"].update(acc=101.0), "percentages"),
    (lambda r: r.update(table="nowhere"), "table 'nowhere' is not declared"),
    (lambda r: r.update(date="yesterday"), "is not YYYY-MM-DD"),
    (lambda r: r.update(id="omniglot_small.02"), "the id is used twice"),
    (lambda r: r["scores"].update(ten_way={"acc": 50.0, "ci95": 1.0}), "is not a column of table omniglot_small"),
])
def test_a_malformed_measurement_is_one_line_naming_the_row(tmp_path, change, message):
    root = copy_docs(tmp_path)
    path = root / "docs/results.yaml"
    data = yaml.safe_load(path.read_text())
    change(next(r for r in data["measurements"] if r["id"] == "omniglot_small.01"))
    path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False))
    with pytest.raises(MetalearnError, match=message):
        record.load(path)


def test_the_cards_table_lists_every_card_with_its_figures():
    from metalearn.cards import all_cards

    table = record.render_cards()
    for card in all_cards():
        assert f"`{card.name}`" in table
        for s in card.expected:
            assert f"{s.setting}: {s.accuracy:.2f} ± {s.ci95:.2f}%" in table


def test_metalearn_reproduce_tables_check_exits_zero_on_the_repository(capsys):
    from metalearn.reproduce import main

    with pytest.raises(SystemExit) as e:
        main(["tables", "--check"])
    assert e.value.code == 0
    assert "agrees with docs/results.yaml" in capsys.readouterr().out
