"""scripts/ptb_study_report.py builds the study's tables from the runs' own files."""

import importlib.util
import json
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _report():
  spec = importlib.util.spec_from_file_location(
      "ptb_study_report", ROOT / "scripts" / "ptb_study_report.py"
  )
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_tables_come_from_eval_json_and_metrics(tmp_path, capsys):
  report = _report()
  phase2 = tmp_path / "b" / "phase2"
  phase2.mkdir(parents=True)
  (phase2 / "eval.json").write_text(
      json.dumps(
          {
              "ppl": 61.234,
              "ppl_word": 140.5,
              "kl": 7.5,
              "neg_elbo": 98.25,
              "mi": 3.125,
              "au": 11,
              "mi_batch": 2.5,
              "rec": 90.75,
              "num_samples": 500,
              "num_examples": 300,
          }
      )
  )
  (tmp_path / "b" / "phase1").mkdir()
  rows = [
      {"step": 10, "val/mi": 1.0, "val/au": 3.0, "val/kl": 9.0, "val/rec": 80.0},
      {"step": 20, "train/loss": 1.0},
      {"step": 30, "val/mi": 4.5, "val/au": 12.0, "val/kl": 20.0, "val/rec": 70.0},
  ]
  (tmp_path / "b" / "phase1" / "metrics.jsonl").write_text(
      "\n".join(json.dumps(r) for r in rows) + "\n"
  )
  assert report.main(["--runs", str(tmp_path), "--env", "P1_EPOCHS=1"]) == 0
  out = capsys.readouterr().out
  b_row = next(line for line in out.splitlines() if line.startswith("| b |"))
  for cell in (
      "| 61.23 | 140.50 | 7.50 |",
      "98.25",
      "3.12",
      "| 11 |",
      "| 500 | 300 |",
      "Max pool: 51.60 / 0.09 / 104.14 / 0 / 0",
  ):
    assert cell in b_row, (cell, b_row)
  assert "| a | phase 2 only (no phase 1), max pool | not run |" in out
  # The phase table takes the last validation row of each phase.
  assert "| b | 4.50 / 12 / 20.00 / 70.00 | - |" in out
  assert "P1_EPOCHS=1 bash scripts/ptb_study.sh ROW T5_DIR" in out


def test_missing_runs_directory_is_a_clear_error(tmp_path, capsys):
  assert _report().main(["--runs", str(tmp_path / "nope")]) == 2
  assert "nope is not a directory" in capsys.readouterr().err
