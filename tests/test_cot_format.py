"""dataset.cot_format: the four-stage format's tags and order, parsing replies, the conclusion, the option
prompt and the option matcher, and that every user of the format reads it from there."""
import pytest

from dataset import cot_format as fmt

OPTIONS = {"A": "red", "B": "dark red", "C": "blue", "D": "3"}


def test_tags_come_in_answer_order_and_four_stage_writes_them_so():
    assert fmt.STAGE_NAMES == ("SUMMARY", "CAPTION", "REASONING", "CONCLUSION")
    assert fmt.STAGE_TAGS == ("<SUMMARY>", "</SUMMARY>", "<CAPTION>", "</CAPTION>",
                              "<REASONING>", "</REASONING>", "<CONCLUSION>", "</CONCLUSION>")
    reply = fmt.four_stage("s", "c", "r", "B")
    assert reply == ("<SUMMARY> s </SUMMARY> <CAPTION> c </CAPTION> "
                     "<REASONING> r </REASONING> <CONCLUSION> B </CONCLUSION>")
    positions = [reply.index(t) for t in fmt.STAGE_TAGS]
    assert positions == sorted(positions)
    assert fmt.parse_stages(reply) == {"SUMMARY": "s", "CAPTION": "c", "REASONING": "r", "CONCLUSION": "B"}
    assert fmt.format_problems(reply) == []


def test_missing_unclosed_duplicate_and_misordered_stages_are_named():
    no_caption = "<SUMMARY> s </SUMMARY> <REASONING> r </REASONING> <CONCLUSION> B </CONCLUSION>"
    assert fmt.parse_stages(no_caption) == {"SUMMARY": "s", "REASONING": "r", "CONCLUSION": "B"}
    assert fmt.format_problems(no_caption) == ["missing <CAPTION>"]

    unclosed = fmt.four_stage("s", "c", "r", "B").replace(" </CONCLUSION>", "")
    assert fmt.parse_stages(unclosed)["CONCLUSION"] == "B"  # to the end of the text
    assert fmt.format_problems(unclosed) == ["<CONCLUSION> is not closed by </CONCLUSION>"]

    twice = fmt.four_stage("s", "c", "r", "A") + " <CONCLUSION> C </CONCLUSION>"
    assert fmt.parse_stages(twice)["CONCLUSION"] == "A"  # a stage's text is its first occurrence
    assert "<CONCLUSION> appears 2 times" in fmt.format_problems(twice)

    swapped = "<CAPTION> c </CAPTION> <SUMMARY> s </SUMMARY> <REASONING> r </REASONING> <CONCLUSION> B </CONCLUSION>"
    assert fmt.format_problems(swapped) == ["stages out of order: CAPTION SUMMARY REASONING CONCLUSION "
                                            "(expected SUMMARY CAPTION REASONING CONCLUSION)"]
    assert fmt.format_problems("</SUMMARY> s <SUMMARY>", fmt.DEFAULT_STAGES[:1]) == ["</SUMMARY> comes before <SUMMARY>"]
    assert fmt.stage_text("no tags at all", fmt.CONCLUSION) is None


def test_extract_conclusion_takes_the_last_one_or_the_whole_reply():
    assert fmt.extract_conclusion("<CONCLUSION> A </CONCLUSION> then <CONCLUSION> C </CONCLUSION>") == "C"
    assert fmt.extract_conclusion("<REASONING> r </REASONING> <CONCLUSION> B, blue") == "B, blue"
    assert fmt.extract_conclusion("  plain answer B \n") == "plain answer B"
    other = fmt.StageSpec.tagged("ANSWER")
    assert fmt.extract_conclusion("<ANSWER> D </ANSWER> <CONCLUSION> A </CONCLUSION>", other) == "D"


def test_option_prompt_lists_the_present_options_in_letter_order():
    row = {"question": "What color?", "C": "blue", "A": "red", "B": "green", "D": float("nan")}
    assert fmt.tsv_row_to_prompt(row) == "What color?\nOptions: A. red B. green C. blue"
    assert fmt.format_options({"B": "x", "A": " ", "D": "y"}) == "Options: B. x D. y"


@pytest.mark.parametrize("text, expected", [
    ("B", ("B", "letter")), ("(B)", ("B", "letter")), ("B.", ("B", "letter")), ("[C]", ("C", "letter")),
    ("the answer is C", ("C", "letter")), ("Option D: 3", ("D", "letter")), ("C. blue", ("C", "letter")),
    ("It is blue", ("C", "text")),
    ("dark red", ("B", "text")),  # "red" inside "dark red" is not a second hit
    ("red", ("A", "text")),
    ("A circle is shown, so C", ("C", "letter")),  # "A circle": the article, not option A
    ("red or blue", (None, "none")), ("E", (None, "none")), ("", (None, "none")),
])
def test_match_option_letter_text_and_forms(text, expected):
    assert fmt.match_option(text, OPTIONS) == expected


def test_predict_marks_a_letter_that_is_not_an_option():
    assert fmt.predict("<CONCLUSION> E </CONCLUSION>", OPTIONS) == ("E", "not_an_option")
    assert fmt.predict("<CONCLUSION> the answer is E </CONCLUSION>", OPTIONS) == ("E", "not_an_option")
    assert fmt.predict("<CONCLUSION> (B) </CONCLUSION>", OPTIONS) == ("B", "letter")
    assert fmt.predict("<CONCLUSION> no idea </CONCLUSION>", OPTIONS) == (None, "none")


def test_the_users_of_the_format_share_it():
    import dataset.synth as synth
    import inference.evaluate as evaluate
    import inference.judges as judges
    import inference.options as options
    assert options.DEFAULT_STAGES is fmt.DEFAULT_STAGES and options.StageSpec is fmt.StageSpec
    assert synth.tsv_row_to_prompt is fmt.tsv_row_to_prompt and synth.four_stage is fmt.four_stage
    assert evaluate.predict is fmt.predict and evaluate.match_option is fmt.match_option
    assert judges.tag_content is fmt.stage_text
    source = open(evaluate.__file__, encoding="utf-8").read()
    assert "cli_demo" not in source  # evaluation does not import the CLI module


def test_the_tiny_tokenizer_keeps_every_tag_one_piece(tiny_tokenizer):
    from models.tokenizer import STAGE_TAGS
    assert set(fmt.STAGE_TAGS) <= set(STAGE_TAGS)
    for tag in fmt.STAGE_TAGS:
        pieces = [tiny_tokenizer.sp.id_to_piece(i) for i in tiny_tokenizer.encode(tag, add_special_tokens=False)]
        assert tag in pieces, (tag, pieces)  # the tag whole (after sentencepiece's word-start piece)
