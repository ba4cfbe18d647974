"""analysis/: the report's table marks and directions (from the task registry), and the t-SNE figure."""

import html
import re
import shutil

import pytest

from helpers import tiny_run
from sftmix.analysis.document import Bullets, Details, Figures, Section, Table, Text, to_html, to_markdown
from sftmix.analysis.report import latex, markdown, write_report
from sftmix.analysis.results import lower_is_better, summary
from sftmix.analysis.tsne import load_points, tsne
from sftmix.errors import SftmixError
from sftmix.eval import contamination, tasks
from sftmix.eval.contamination import RunContamination, TaskContamination
from sftmix.models import resolve_model
from sftmix.study.ingest import contamination_rows
from sftmix.study.store import Metric, Store
from sftmix.train.strategies import run_strategy


def test_report_marks_best_two():
    md = markdown(["run", "gsm8k/accuracy", "loss/x", "train PFLOPs", "eval PFLOPs"],
                  [["a", 10.0, 1.0, 0, 0], ["b", 30.0, 2.0, 0, 0], ["c", 20.0, 3.0, 0, 0]])
    assert "**30.0000**" in md and "<u>20.0000</u>" in md and "**1.0000**" in md and "<u>2.0000</u>" in md


def test_directions_and_pass_fail_come_from_the_task_registry():
    assert lower_is_better("loss/anything") and not lower_is_better("gsm8k/accuracy")
    assert tasks.direction("humaneval/pass@1") == tasks.HIGHER and tasks.direction("humaneval/pass@1_verbatim") is None
    assert tasks.is_binary("gsm8k/accuracy") and tasks.is_binary("humaneval/pass@1")
    assert not tasks.is_binary("mtbench/score") and not tasks.is_binary("loss/gsm8k")
    with pytest.raises(SftmixError, match="task 'nosuchtask' is not known here"):
        tasks.direction("nosuchtask/x")


def test_what_a_task_name_means_does_not_depend_on_what_was_asked_before():
    """The registry keeps no state: a user task imported earlier in the process is still unknown
    to a caller that does not pass it, and the tasks a study names are passed explicitly."""
    first = tasks.get("usertasks.exact:arithmetic")
    assert tasks.get("usertasks.exact:arithmetic") is first
    with pytest.raises(SftmixError, match="task 'arithmetic' is not known here"):
        tasks.direction("arithmetic/accuracy")
    assert not tasks.is_binary("arithmetic/accuracy")
    known = tasks.known([{"eval": {"tasks": ["loss", "usertasks.exact:arithmetic"]}}, {"eval": {"tasks": ["gsm8k"]}}])
    assert tasks.direction("arithmetic/accuracy", known) == tasks.HIGHER and tasks.is_binary("arithmetic/accuracy", known)
    # a second task of that name, asked for alone, is fine; beside the first in one study it is refused
    assert tasks.get("usertasks.bad:arithmetic_again").metrics == {"score": tasks.HIGHER}
    with pytest.raises(SftmixError, match="'usertasks.exact:arithmetic' and 'usertasks.bad:arithmetic_again' are both named"):
        tasks.known([{"eval": {"tasks": ["usertasks.exact:arithmetic"]}}, {"eval": {"tasks": ["usertasks.bad:arithmetic_again"]}}])


def test_tsne_same_ids_for_both_models(tmp_path):
    final = run_strategy(tiny_run(tmp_path, "t", strategy={"name": "individual", "sources": ["generated_code"]}), progress=False)
    png = tsne({"base": resolve_model("tiny"), "tuned": str(final)}, ["generated_math", "generated_code"], tmp_path / "ts",
               n=12, layer=15)
    doc = load_points(tmp_path / "ts" / "tsne.json")
    assert png.exists() and len(doc.ids) == 24 and len(set(doc.ids)) == 24
    assert doc.models["base"].layer == 1  # 2-layer model: the middle layer instead of 15
    assert len(doc.models["tuned"].xy) == 24 and doc.models["base"].xy != doc.models["tuned"].xy


def test_the_html_and_markdown_reports_render_the_same_sections():
    """The report is built once as sections of blocks; each rendering shows every section, in the
    same order, with the same text (escaped for HTML)."""
    sections = [Section(None, [Text("a <top> line", "top"), Text("plain")]),
                Section("Findings", [Bullets(["A beats B | really", "C ties D"], ["as", "not"])]),
                Section("Results", [Text("careful", "note"), Table(["run", "loss/x"], [["a", "1.0"], ["b", "2.0"]], {(0, 1): "best"}),
                                    Text("percentile bootstrap", "method", "Method.")]),
                Section("Figures", [Figures({"f.png": b"\x89PNG"})]),
                Section("Configs and provenance", [Details("study", '{"name": "x"}')])]
    page, md = to_html("T", sections), to_markdown("T", sections)
    assert re.findall(r"<h2>(.*?)</h2>", page) == re.findall(r"^## (.*)$", md, re.M) == \
        ["Findings", "Results", "Figures", "Configs and provenance"]
    for text in ("a <top> line", "plain", "A beats B | really", "C ties D", "careful", "percentile bootstrap", '{"name": "x"}'):
        assert html.escape(text) in page, text
        assert text in md or text.replace("|", "\\|") in md, text
    assert "<td class='best'>1.0</td>" in page and "| a | **1.0** |" in md
    assert "<li class='as'>" in page and "![f.png](f.png)" in md and "data:image/png;base64," in page
    with pytest.raises(TypeError, match="not a report block"):
        to_html("T", [Section("x", ["a bare string"])])


def test_flops_are_6nd_for_training_and_2n_per_generation_token_averaged_over_seeds(tmp_path):
    """The table's compute columns from the store alone: training 6·N·D over the real tokens a run
    trained on, evaluation 2·N per prompt or generated token of its generation tasks (summed over
    tasks); a configuration's value is the mean over its seeds, and a failed run counts nowhere."""
    s = Store(tmp_path / "results.sqlite")
    cfg = {"eval": {"tasks": ["gsm8k", "humaneval"]}}
    runs = [("a", {"x": 1, "seed": 0}, 1e8, 1e6, {"gsm8k": 3e5, "humaneval": 2e5}),
            ("b0", {"x": 2, "seed": 0}, 1e8, 2e6, {"gsm8k": 1e5}),
            ("b1", {"x": 2, "seed": 1}, 1e8, 4e6, {"gsm8k": 3e5})]
    for rid, point, n, d, generated in runs:
        s.start(rid, f"x={point['x']} seed={point['seed']}", point, {**cfg, "seed": point["seed"]})
        metrics = [Metric(rid, "gsm8k", "accuracy", 50.0)] + [Metric(rid, t, "tokens_processed", v) for t, v in generated.items()]
        s.finish(rid, "", "", metrics, d, n)
    s.start("c", "x=3 seed=0", {"x": 3, "seed": 0}, {**cfg, "seed": 0})
    s.fail("c", "boom")
    header, rows = summary(s)
    cols = header.index("train PFLOPs"), header.index("eval PFLOPs")
    got = {r[0]: (r[1], r[cols[0]], r[cols[1]]) for r in rows}
    assert got == {"x=1": (1, 0.6, 0.1),                 # 6·1e8·1e6 / 1e15; 2·1e8·(3e5 + 2e5) / 1e15
                   "x=2": (2, 1.8, 0.04)}, got          # mean of 1.2 and 2.4; mean of 0.02 and 0.06


def test_the_latex_table_escapes_every_special_character_of_a_label():
    """A configuration's label holds the study's own values (a ``_config`` name, a path): in
    ``table.tex`` each LaTeX special character stands for itself, and each row keeps its columns."""
    label = "a_b%c$d^e~f\\g{h}&#"
    tex = latex(["run", "loss/x_y", "train PFLOPs", "eval PFLOPs"], [[label, (1.0, 0.5, 1.5), 0.1, 0.0], ["b", (2.0, 1.5, 2.5), 0.1, 0.0]])
    lines = tex.splitlines()
    assert lines[2] == r"run & loss/x\_y & train PFLOPs & eval PFLOPs \\"
    row = lines[4]
    assert row.startswith(r"a\_b\%c\$d\textasciicircum{}e\textasciitilde{}f\textbackslash{}g\{h\}\&\# & ")
    assert [len(re.findall(r"(?<!\\)&", x)) for x in lines[2:6] if x != r"\midrule"] == [3, 3, 3]  # 4 columns each
    assert r"\textbf{1.0000 [0.5000, 1.5000]}" in row  # lower loss: best


def test_the_report_shows_each_runs_scores_without_the_items_its_training_held(tmp_path):
    s = Store(tmp_path / "results.sqlite")
    for rid, hit, clean in (("a", ["gsm8k/test/0"], 50.0), ("b", [], 40.0)):
        ev = tmp_path / rid / "eval"
        ev.mkdir(parents=True)
        doc = RunContamination(ngram=13, tasks={"gsm8k": TaskContamination(metric="accuracy", items=3, hit=hit, rows=len(hit),
                                                                           value=66.67 if hit else 40.0, clean_value=clean)})
        (ev / contamination.FILE).write_text(doc.model_dump_json())
        s.start(rid, f"x={rid}", {"x": rid}, {"eval": {"tasks": ["gsm8k"]}})
        s.finish(rid, "", str(ev), [Metric(rid, "gsm8k", "accuracy", doc.tasks["gsm8k"].value)], 1e6, 1e8,
                 contamination=contamination_rows(rid, ev))
        shutil.rmtree(ev)  # the report reads the store alone
    s.start("c", "x=c", {"x": "c"}, {})
    s.fail("c", "boom")  # a failed run has no row
    report = write_report(s, tmp_path / "report", "t")
    md = (report.parent / "report.md").read_text()
    assert "## Benchmark contamination" in md
    assert "| x=a | gsm8k | 1 of 3 | 1 | 13 | accuracy | 66.67 | 50.00 |" in md
    assert "| x=b | gsm8k | 0 of 3 | 0 | 13 | accuracy | 40.00 | 40.00 |" in md
    assert "x=c | gsm8k" not in md
