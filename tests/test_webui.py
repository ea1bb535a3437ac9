"""The web board (webui/) in a real headless browser: the page loads, the form makes the exact launcher
command, a 5-step cogvlm-tiny run is watched to its end, a second run is stopped, chat streams and staged
search shows its stages. Set COGCOT_SCREENSHOTS=DIR to save a screenshot of each tab there."""
import os
import re
import time

import pytest

pytestmark = pytest.mark.filterwarnings("ignore")

TINY_RUN = {"train_iters": "5", "batch_size": "4", "synth_n": "32", "synth_n_test": "8", "accuracy_limit": "8",
            "accuracy_max_new_tokens": "24", "log_interval": "1", "eval_interval": "5"}


def _field(page, dest):
    return page.locator(f"#opt-{dest} textarea, #opt-{dest} input").first


def _fill(page, values):
    for dest, value in values.items():
        _field(page, dest).fill(value)


def _text(page, elem_id):
    return page.locator(f"#{elem_id}").inner_text()


def _shot(page, name, full_page=True):
    out = os.environ.get("COGCOT_SCREENSHOTS")
    if out:
        os.makedirs(out, exist_ok=True)
        page.screenshot(path=os.path.join(out, f"webui-{name}.png"), full_page=full_page)


def _command(page):
    page.click("#train-preview")
    box = page.locator("#train-command textarea")
    page.wait_for_function("e => e.value.length > 0", arg=box.element_handle())
    return box.input_value()


def test_page_loads_with_every_launcher_option(page):
    from finetune import arguments
    parser = arguments.build_parser(launcher=True)
    flags = [a.option_strings[0] for a in parser._actions if a.option_strings and a.dest != "help"]
    body = page.inner_text("body")
    assert "cogcot board" in body
    missing = [f for f in flags if f not in body]
    assert not missing, f"options missing from the Train tab: {missing}"


def test_two_options_change_the_previewed_command(page):
    before = _command(page)
    assert before.startswith("bash ") and before.split()[1].endswith("finetune/run.sh")
    assert "--lr" not in before and "--train-iters" not in before  # defaults are not written out
    _fill(page, {"train_iters": "7", "lr": "0.01"})
    page.click("#train-preview")
    page.wait_for_function("e => e.value.includes('--train-iters 7')",
                           arg=page.locator("#train-command textarea").element_handle())
    after = page.locator("#train-command textarea").input_value()
    assert after == before + " --train-iters 7 --lr 0.01"


def test_bad_option_is_a_message_not_a_crash(page):
    _fill(page, {"train_iters": "seven"})
    page.click("#train-preview")
    page.wait_for_selector("#train-message :text('bad option')")
    assert "--train-iters" in _text(page, "train-message")


def test_tiny_run_shows_loss_plot_and_finished_table(page, board):
    _fill(page, TINY_RUN)
    page.click("#train-start")
    page.wait_for_selector("#train-status :text('finished')", timeout=480_000)  # ~25 s on a quiet 2-core box
    page.wait_for_selector("#train-loss img, #train-loss canvas, #train-loss svg")
    page.wait_for_selector("#train-result table")
    table = _text(page, "train-result")
    assert "overall" in table and re.search(r"\d+\.\d%", table)
    assert "inference.cli_demo --from_pretrained" in page.locator("#train-chat-command textarea").input_value()
    assert "validation loss" in _text(page, "train-valid")
    assert "step 5/5" in _text(page, "train-progress")
    _shot(page, "train", full_page=False)  # the top: the form's first groups beside the run's results
    runs = list((board.root / "checkpoints").glob("cogvlm-tiny-full-*/finetune_summary.json"))
    assert runs, "the run wrote no summary under the board's root"


def test_second_run_is_stopped_midway(page, board):
    # far more steps than the test waits for: on a quiet box 400 tiny steps end in about a minute,
    # before the stop could be clicked
    _fill(page, {**TINY_RUN, "train_iters": "100000", "save_interval": "3"})
    page.locator("#opt-skip_accuracy input").check()
    page.click("#train-start")
    page.wait_for_selector("#train-status :text('running')")
    # any step past the first save (iteration 3); polling may skip single steps on a fast box
    page.wait_for_selector("#train-progress :text-matches('step ([4-9]|[1-9][0-9]+)/100000')", timeout=400_000)
    page.reload()  # a reopened page re-attaches to the run that is still going
    page.wait_for_selector("#train-status :text('running')")
    page.wait_for_selector("#train-progress :text('/100000')")
    page.click("#train-stop")
    page.wait_for_selector("#train-status :text('stopped')", timeout=90_000)
    status = _text(page, "train-status")
    assert "finished" not in status
    m = re.search(r"step (\d+)/100000", _text(page, "train-progress"))
    assert m and int(m.group(1)) < 100000
    assert "resumable from iteration" in status and "--resume" in status


def test_data_preview_marks_the_trained_parts(page, board):
    files = sorted((board.root / "data").glob("synth-*/train.jsonl"))
    assert files, "the tiny run generated no synthetic data under the board's root"
    _fill(page, {"train_data": str(files[0].relative_to(board.root))})
    page.click("#train-data-preview")
    page.wait_for_selector("#data-counts :text('records:')")
    assert "32 parsed" in _text(page, "data-counts")
    sample = page.locator("#data-sample")
    assert "CONCLUSION" in sample.inner_text()
    assert "no problems found" in _text(page, "data-problems")


def _tab(page, name):
    page.get_by_role("tab", name=name).click()


def test_evaluate_tab_shows_the_table_and_filters_the_wrong_ones(page, board):
    runs = sorted((board.root / "checkpoints").glob("cogvlm-tiny-full-*/finetune_summary.json"))
    tsvs = sorted((board.root / "data").glob("synth-*/test.tsv"))
    assert runs and tsvs, "needs the tiny run's checkpoint and data"
    _tab(page, "Evaluate")
    model = page.locator("#eval-model input")
    model.fill(str(runs[0].parent.relative_to(board.root)))
    model.press("Enter")
    page.locator("#eval-tsv textarea, #eval-tsv input").first.fill(str(tsvs[0].relative_to(board.root)))
    page.locator("#eval-limit textarea, #eval-limit input").first.fill("4")
    page.locator("#eval-max-new input").fill("24")
    page.click("#eval-run")
    page.wait_for_selector("#eval-status :text('finished')", timeout=180_000)
    page.wait_for_selector("#eval-table table")
    assert "overall" in _text(page, "eval-table")
    page.wait_for_selector("#eval-records table")
    rows = page.locator("#eval-records tr")
    assert rows.count() == 1 + 4  # header + the 4 questions
    wrong = page.locator("#eval-records tr.wrong").count()
    page.locator("#eval-wrong-only input").check()
    page.wait_for_function(f"() => document.querySelectorAll('#eval-records tr').length === {1 + wrong}")
    assert page.locator("#eval-records tr.right").count() == 0
    _shot(page, "evaluate")


def _upload_image(page, board):
    images = sorted((board.root / "data").glob("synth-*/images/*.png"))
    assert images
    page.locator("#chat-image input[type=file]").set_input_files(str(images[0]))
    page.wait_for_selector("#chat-image img")


def test_chat_streams_a_reply_about_an_uploaded_image(page, board):
    _tab(page, "Chat")
    _upload_image(page, board)
    # record every change of the reply's length: a streamed reply grows in several steps
    page.evaluate("""() => { window.lengths = [];
        new MutationObserver(() => {
            const b = document.querySelectorAll('#chat-bot .message.bot, #chat-bot [data-testid=bot]');
            if (b.length) window.lengths.push(b[b.length - 1].innerText.length); })
        .observe(document.querySelector('#chat-bot'), {subtree: true, childList: true, characterData: true}); }""")
    page.locator("#chat-text textarea, #chat-text input").first.fill("What color is the shape?")
    page.click("#chat-send")
    page.wait_for_selector("#chat-message :text('answered')", timeout=120_000)
    lengths = page.evaluate("window.lengths")
    distinct = sorted({n for n in lengths if n > 0})
    assert len(distinct) >= 2, f"the reply did not arrive in pieces: {lengths[:20]}"
    assert "error" not in _text(page, "chat-message").lower()
    _shot(page, "chat")


def test_staged_search_shows_four_stages_with_their_candidates(page, board):
    _tab(page, "Chat")
    _upload_image(page, board)
    page.locator("#chat-search-on input").check()
    page.locator("#chat-step-tokens input").fill("6")
    page.locator("#chat-text textarea, #chat-text input").first.fill("How many shapes?")
    page.click("#chat-send")
    page.wait_for_selector("#chat-search :text('4 step(s) decided')", timeout=180_000)
    steps = page.locator("#chat-search .cogcot-step")
    assert steps.count() == 4
    names = [steps.nth(i).locator("h4").inner_text() for i in range(4)]
    assert [s.upper() for s in names] == ["SUMMARY", "CAPTION", "REASONING", "CONCLUSION"]
    for i in range(4):
        assert steps.nth(i).locator("li").count() == 4  # N = 4 candidates
        assert steps.nth(i).locator("li.winner").count() == 1
        assert steps.nth(i).locator("tr").count() == 1 + 3  # a 4-way knockout: 3 matches
    _shot(page, "search")


def test_data_tab_runs_the_teacher_with_acceptance_and_reasons(page, board):
    from tests.fake_openai import FakeOpenAI, prompt_text, reply
    good = ("<SUMMARY> I look. </SUMMARY> <CAPTION> A picture. </CAPTION> <REASONING> So the option is {l}. "
            "</REASONING> <CONCLUSION> {l} </CONCLUSION>")

    def teacher(body):  # right for answers A and B, a refusal otherwise
        m = re.search(r"The right answer is: (\w)", prompt_text(body))
        letter = m.group(1) if m else "?"
        return reply(good.format(l=letter)) if letter in "AB" else reply("I'm sorry, but I cannot help with that.")
    data = sorted((board.root / "data").glob("synth-*/test.jsonl"))
    assert data
    import json
    answers = [json.loads(l)["conversations"][-1]["value"] for l in data[0].read_text().splitlines() if l.strip()]
    want_accepted = sum(bool(re.search(r"<CONCLUSION>\s*[AB]\s*</CONCLUSION>", a)) for a in answers)
    with FakeOpenAI(teacher) as fake:
        _tab(page, "Data")
        for elem, value in (("teacher-data", str(data[0].relative_to(board.root))), ("teacher-base", fake.base_url),
                            ("teacher-model", "fake-teacher")):
            page.locator(f"#{elem} textarea, #{elem} input").first.fill(value)
        page.click("#teacher-run")
        page.wait_for_selector("#teacher-status :text('finished')", timeout=120_000)
    page.wait_for_selector("#teacher-counts :text('acceptance rate')")
    counts = _text(page, "teacher-counts")
    assert f"accepted {want_accepted}" in counts and f"rejected {len(answers) - want_accepted}" in counts
    if want_accepted < len(answers):
        page.wait_for_selector("#teacher-rejects table")
        assert "refusal" in _text(page, "teacher-rejects")
    _shot(page, "data")
