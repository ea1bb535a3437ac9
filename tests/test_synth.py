"""dataset.synth: determinism, file formats, and that every answer is true for the pixels drawn.

The answers are checked by an independent solver that reads only the question text and the image
pixels (shapes are drawn without anti-aliasing, so each shape is a blob of one palette color whose
fill ratio tells circle / square / triangle apart); it never looks at the generator's scene.
"""
import base64
import csv
import io
import json
import random
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dataset import synth
from dataset.synth import (CATEGORIES, COLORS, LETTERS, OPTION_ORDERS, PALETTE, generate, item_rng, make_item,
                           tsv_row_to_prompt)

N_TRAIN, N_TEST, SEED = 48, 24, 7
STAGES_RE = re.compile(r"^<SUMMARY> (.+) </SUMMARY> <CAPTION> (.+) </CAPTION> "
                       r"<REASONING> (.+) </REASONING> <CONCLUSION> ([ABCD]) </CONCLUSION>$")


# ----------------------------------------------------------------------------- pixel solver

def _label(mask: np.ndarray) -> np.ndarray:
    """8-connected component labels of a boolean mask (0 = background), by max-propagation."""
    h, w = mask.shape
    lab = np.where(mask, np.arange(1, h * w + 1).reshape(h, w), 0)
    while True:
        pad = np.pad(lab, 1)
        nb = np.max([pad[1 + dy:1 + dy + h, 1 + dx:1 + dx + w] for dy in (-1, 0, 1) for dx in (-1, 0, 1)], axis=0)
        new = np.where(mask, nb, 0)
        if np.array_equal(new, lab):
            return lab
        lab = new


def blobs(img: Image.Image):
    """One dict per 8-connected blob of a palette color: color, area, bbox (x0, y0, x1, y1 exclusive), shape."""
    arr = np.asarray(img.convert("RGB"))
    out = []
    for name, rgb in PALETTE.items():
        lab = _label(np.all(arr == np.array(rgb, dtype=arr.dtype), axis=-1))
        for k in np.unique(lab[lab > 0]):
            ys, xs = np.nonzero(lab == k)
            box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
            w, h = box[2] - box[0], box[3] - box[1]
            fill = len(xs) / (w * h)
            shape = "square" if fill > 0.9 else "circle" if fill > 0.65 else "triangle"
            out.append({"color": name, "area": len(xs), "box": box, "shape": shape, "w": w, "h": h,
                        "cx": (box[0] + box[2]) / 2, "cy": (box[1] + box[3]) / 2})
    return out


def solve(question: str, img: Image.Image) -> str:
    """The true answer value, from the question text and the pixels alone."""
    bs = blobs(img)
    W, H = img.size
    if question == "What color is the shape?":
        (b,) = bs
        return b["color"]
    if question == "What shape is in the image?":
        (b,) = bs
        return b["shape"]
    m = re.fullmatch(r"Where is the (\w+) in the image\?", question)
    if m:
        (b,) = bs
        assert b["shape"] == m.group(1)
        dx, dy = b["cx"] - W / 2, b["cy"] - H / 2
        assert abs(abs(dx) - abs(dy)) >= W / 8, "position must be unambiguous"
        if abs(dx) > abs(dy):
            return "left" if dx < 0 else "right"
        return "top" if dy < 0 else "bottom"
    m = re.fullmatch(r"Where is the (\w+) (\w+) relative to the (\w+) (\w+)\?", question)
    if m:
        ca, sa, cb, sb = m.groups()
        (a,) = [b for b in bs if b["color"] == ca]
        (b,) = [b for b in bs if b["color"] == cb]
        assert (a["shape"], b["shape"]) == (sa, sb)
        dx, dy = a["cx"] - b["cx"], a["cy"] - b["cy"]
        assert abs(abs(dx) - abs(dy)) >= W / 8, "relation must be unambiguous"
        if abs(dx) > abs(dy):
            return "left" if dx < 0 else "right"
        return "above" if dy < 0 else "below"
    m = re.fullmatch(r"Which color has the (tallest|shortest) bar\?", question)
    if m:
        heights = sorted((b["h"], b["color"]) for b in bs)
        assert len({h for h, _ in heights}) == len(heights) >= 3, "bar heights must differ"
        return heights[-1][1] if m.group(1) == "tallest" else heights[0][1]

    def matching(what: str):
        if what == "shapes":
            return bs
        m2 = re.fullmatch(r"(\w+) shapes", what)
        if m2:
            return [b for b in bs if b["color"] == m2.group(1)]
        assert what.endswith("s") and what[:-1] in synth.SHAPES, what
        return [b for b in bs if b["shape"] == what[:-1]]

    m = re.fullmatch(r"How many (.+) are there\?", question)
    if m:
        return str(len(matching(m.group(1))))
    m = re.fullmatch(r"Remove all the (.+)\. How many shapes are left\?", question)
    if m:
        return str(len(bs) - len(matching(m.group(1))))
    raise AssertionError(f"no solver for question {question!r}")


def check_item(question, options, letter, text, img):
    assert len(options) == 4 and len(set(options)) == 4, options
    assert all(o.strip() == o and o for o in options)
    m = STAGES_RE.match(text)
    assert m, text
    assert m.group(4) == letter
    truth = solve(question, img)
    assert options[LETTERS.index(letter)] == truth, (question, options, letter, truth)


# ----------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    paths = generate(out, N_TRAIN, SEED, n_test=N_TEST, progress=False)
    return paths


def read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def read_tsv(path):
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def all_files(root: Path):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------- tests

def test_deterministic_and_seed_dependent(data, tmp_path):
    again = generate(tmp_path / "again", N_TRAIN, SEED, n_test=N_TEST, progress=False)
    first, second = all_files(data["out_dir"]), all_files(again["out_dir"])
    assert first.keys() == second.keys()
    assert first == second  # byte-identical: PNGs, JSONL, TSV
    other = generate(tmp_path / "other", N_TRAIN, SEED + 1, n_test=N_TEST, progress=False)
    third = all_files(other["out_dir"])
    assert third.keys() == first.keys()
    assert third["train.jsonl"] != first["train.jsonl"] and third["test.tsv"] != first["test.tsv"]
    assert sum(third[k] != first[k] for k in first if k.startswith("images/")) > 0.9 * (N_TRAIN + N_TEST)


def test_items_do_not_depend_on_n(data, tmp_path):
    small = generate(tmp_path / "small", 10, SEED, n_test=5, progress=False)
    assert read_jsonl(small["train"]) == read_jsonl(data["train"])[:10]
    assert read_tsv(small["tsv"]) == read_tsv(data["tsv"])[:5]


def test_record_format_and_answers(data):
    root = data["out_dir"]
    for split, n, prefix in (("train", N_TRAIN, "synth-"), ("test", N_TEST, "synth-test-")):
        recs = read_jsonl(data[split])
        assert len(recs) == n
        for i, r in enumerate(recs):
            assert set(r) == {"id", "image", "conversations", "category", "answer"}
            assert r["id"] == f"{prefix}{i + 1:06d}" and r["image"] == f"images/{r['id']}.png"
            human, gpt = r["conversations"]
            assert human["from"] == "human" and gpt["from"] == "gpt"
            assert human["value"].startswith("<image>\n") and human["value"].count("<image>") == 1
            question, opt_line = human["value"][len("<image>\n"):].split("\n")
            m = re.fullmatch(r"Options: A\. (.+) B\. (.+) C\. (.+) D\. (.+)", opt_line)
            assert m, opt_line
            options = list(m.groups())
            assert r["answer"] in LETTERS
            check_item(question, options, r["answer"], gpt["value"], Image.open(root / r["image"]))


def test_tsv_matches_test_jsonl(data):
    rows, recs = read_tsv(data["tsv"]), read_jsonl(data["test"])
    with open(data["tsv"], encoding="utf-8") as f:
        assert f.readline().rstrip("\n").split("\t") == list(synth.TSV_COLUMNS)
    assert len(rows) == len(recs) == N_TEST
    for row, rec in zip(rows, recs):
        assert rec["id"] == f"synth-test-{int(row['index']):06d}"
        assert row["answer"] == rec["answer"] and row["category"] == rec["category"]
        # The prompt rule: the evaluation prompt built from the row is the training prompt.
        assert "<image>\n" + tsv_row_to_prompt(row) == rec["conversations"][0]["value"]
        assert STAGES_RE.match(rec["conversations"][1]["value"]).group(4) == row["answer"]
        raw = base64.b64decode(row["image"], validate=True)
        png = (data["out_dir"] / rec["image"]).read_bytes()
        assert raw == png
        a = np.asarray(Image.open(io.BytesIO(raw)).convert("RGB"))
        b = np.asarray(Image.open(data["out_dir"] / rec["image"]).convert("RGB"))
        assert a.shape == (56, 56, 3) and np.array_equal(a, b)
        check_item(row["question"], [row[k] for k in LETTERS], row["answer"],
                   rec["conversations"][1]["value"], Image.open(io.BytesIO(raw)))


def test_ids_disjoint_and_categories_present(data):
    train, test = read_jsonl(data["train"]), read_jsonl(data["test"])
    train_ids, test_ids = [r["id"] for r in train], [r["id"] for r in test]
    assert len(set(train_ids)) == len(train_ids) and len(set(test_ids)) == len(test_ids)
    assert not set(train_ids) & set(test_ids)
    assert not {r["image"] for r in train} & {r["image"] for r in test}
    for recs in (train, test):
        counts = Counter(r["category"] for r in recs)
        assert set(counts) == set(CATEGORIES) and max(counts.values()) - min(counts.values()) <= 1
    # Train and test images come from different seeds: no identical picture across the split.
    root = data["out_dir"]
    assert not {(root / r["image"]).read_bytes() for r in train} & {(root / r["image"]).read_bytes() for r in test}


@pytest.mark.parametrize("order", OPTION_ORDERS)
@pytest.mark.parametrize("category", CATEGORIES)
def test_make_item_true_to_pixels_and_scene(category, order):
    letters, option_lists = Counter(), set()
    for i in range(40):
        item = make_item(item_rng(123, "train", i), category, 56, order)
        image, question, options, letter, text, cat = item  # the documented 6-tuple
        assert item[3] == letter and item[-1] == cat and len(item) == 6
        assert cat == category and image.size == (56, 56) and image.mode == "RGB"
        check_item(question, options, letter, text, image)
        letters[letter] += 1
        option_lists.add(tuple(options))
        # The scene matches the pixels: the same colored boxes (and shapes) as the blobs found.
        found = blobs(image)
        drawn = item.scene.get("objects") or item.scene.get("bars")
        assert sorted((b["color"], b["box"]) for b in found) == sorted((o["color"], tuple(o["box"])) for o in drawn)
        for o in item.scene.get("objects", []):
            (b,) = [b for b in found if b["box"] == tuple(o["box"])]
            assert b["shape"] == o["shape"]
            w = o["box"][2] - o["box"][0]
            assert 10 <= w <= 16  # recognisable at 56 px
        assert len(drawn) <= synth.MAX_OBJECTS
        # The caption names the drawn objects.
        caption = STAGES_RE.match(text).group(2)
        if category == "chart":  # the tallest and the shortest bar as the pixels have them, for any question
            heights = sorted(found, key=lambda b: b["box"][1] - b["box"][3])  # top - bottom: tallest first
            assert caption.endswith(f" bars. The {heights[0]['color']} bar is the tallest and the "
                                    f"{heights[-1]['color']} bar is the shortest."), caption
        for o in drawn if category != "chart" else []:
            assert o["color"] in caption
        if category == "arithmetic":  # the removed shapes are listed, then counted
            listed = re.search(r"The \w+ (?:shape)?s? ?are (.+?)\. That makes (\d)\.", STAGES_RE.match(text).group(3))
            removed = re.findall(r"(a|two|three|four) (red|green|blue|yellow) (circle|square|triangle)", listed.group(1))
            assert sum({"a": 1, "two": 2, "three": 3, "four": 4}[k] for k, _, _ in removed) == int(listed.group(2))
        if category in ("count", "arithmetic"):  # identical shapes grouped with their number, palette order
            groups = re.findall(r"(a|two|three|four) (red|green|blue|yellow) (circle|square|triangle)s?", caption)
            number = {"a": 1, "two": 2, "three": 3, "four": 4}
            assert Counter({(c, s): number[k] for k, c, s in groups}) == Counter((b["color"], b["shape"]) for b in found)
            keys = [(COLORS.index(c), synth.SHAPES.index(s)) for _, c, s in groups]
            assert keys == sorted(keys) and len(set(keys)) == len(keys), caption
        if category == "position" and len(drawn) == 2:  # each shape on its side, in the question's order
            ca, sa, cb, sb = re.fullmatch(r"Where is the (\w+) (\w+) relative to the (\w+) (\w+)\?", question).groups()
            side = {"left": ("left", "right"), "right": ("right", "left"), "above": ("top", "bottom"),
                    "below": ("bottom", "top")}[solve(question, image)]
            assert re.search(fr"a {ca} {sa} (on|at) the {side[0]} and a {cb} {sb} (on|at) the {side[1]}\.", caption), caption
    if order == "shuffled":
        assert len(letters) == 4  # the correct option moves around
    else:  # one list of options per category (two for position: in the image / relative to another shape)
        assert len(option_lists) == (2 if category == "position" else 1), option_lists
        assert len(letters) == (3 if category == "shape" else 4)  # star is never the answer


def test_fixed_chart_options_are_the_palette_whatever_the_bars():
    orders = set()
    for i in range(20):
        item = make_item(item_rng(5, "test", i), "chart", 56, "fixed")
        bars = [b["color"] for b in item.scene["bars"]]
        orders.add(tuple(bars))
        assert item.options == list(COLORS)  # the letter names the color, not the bar's place
        ranked = sorted(item.scene["bars"], key=lambda b: -b["height"])
        pick = ranked[0] if item.scene["which"] == "tallest" else ranked[-1]
        assert item.answer == LETTERS[COLORS.index(pick["color"])]
    assert len(orders) > 5  # the bars themselves come in many orders
    with pytest.raises(ValueError, match="option order"):
        make_item(0, "chart", 56, "sorted")


def test_make_item_accepts_int_seed_and_other_sizes():
    a, b = make_item(5, "count"), make_item(random.Random(5), "count")
    assert a.text == b.text and np.array_equal(np.asarray(a.image), np.asarray(b.image))
    for size in (28, 112):
        for cat in CATEGORIES:
            for i in range(5):
                img, q, opts, letter, text, _ = make_item(item_rng(1, "train", i), cat, size)
                assert img.size == (size, size)
                check_item(q, opts, letter, text, img)
    with pytest.raises(ValueError, match="unknown category"):
        make_item(0, "colour")
    with pytest.raises(ValueError, match="image_size"):
        make_item(0, "color", 16)


def test_token_lengths_and_no_byte_fallback(tiny_tokenizer):
    lengths = {c: [] for c in CATEGORIES}
    for cat in CATEGORIES:
        for i in range(40):
            item = make_item(item_rng(9, "train", i), cat)
            ans = tiny_tokenizer.encode(item.text, add_special_tokens=False)
            prompt = tiny_tokenizer.encode(item.prompt, add_special_tokens=False)
            pieces = tiny_tokenizer.convert_ids_to_tokens(ans + prompt)
            assert not [p for p in pieces if p.startswith("<0x")], (item.text, item.prompt)
            assert tiny_tokenizer.unk_token_id not in ans + prompt
            assert len(ans) + len(prompt) <= 160
            assert len(ans) <= 100
            lengths[cat].append(len(ans))
    means = {c: sum(v) / len(v) for c, v in lengths.items()}
    assert max(means.values()) < 80, means
    # Easy categories are also the short ones.
    assert means["color"] < means["count"] and means["shape"] < means["arithmetic"]


def test_prompt_rule():
    row = {"question": "What color is the shape?", "A": "red", "B": "blue", "C": "green", "D": "yellow"}
    assert tsv_row_to_prompt(row) == "What color is the shape?\nOptions: A. red B. blue C. green D. yellow"
    assert tsv_row_to_prompt({"question": "Q", "A": "1", "B": "2", "C": float("nan"), "D": ""}) == \
        "Q\nOptions: A. 1 B. 2"


def test_cli_categories_and_default_n_test(tmp_path, capsys):
    assert synth.main(["--out", str(tmp_path / "c"), "--n", "8", "--seed", "1", "--n-test", "4",
                       "--categories", "color,shape", "--no-progress"]) == 0
    recs = read_jsonl(tmp_path / "c" / "train.jsonl")
    assert [r["category"] for r in recs] == ["color", "shape"] * 4
    assert len(read_tsv(tmp_path / "c" / "test.tsv")) == 4
    assert synth.main(["--out", str(tmp_path / "bad"), "--n", "2", "--seed", "1", "--categories", "colr"]) == 2
    assert "unknown categories" in capsys.readouterr().err
    paths = generate(tmp_path / "d", 5, 1, progress=False)
    assert len(read_jsonl(paths["test"])) == 100 == synth.default_n_test(5)
    assert synth.default_n_test(5000) == 500
    with pytest.raises(SystemExit) as e:
        synth.main(["--help"])
    assert e.value.code == 0
    help_text = capsys.readouterr().out
    for word in ("--out", "--n", "--seed", "--n-test", "--image-size", "--categories", "test.tsv", "Options:"):
        assert word in help_text


@pytest.mark.parametrize("category", CATEGORIES)
def test_answer_styles_write_the_same_reasoning_and_letter(category):
    from dataset.cot_format import STAGE_TAGS, parse_stages, predict
    items = {style: make_item(item_rng(4, "train", 3), category, answer_style=style)
             for style in ("tagged", "plain", "direct")}
    tagged = items["tagged"]
    for item in items.values():  # the style changes the text only
        assert item.image.tobytes() == tagged.image.tobytes() and item.options == tagged.options
        assert item.answer == tagged.answer
        assert predict(item.text, dict(zip("ABCD", item.options)))[0] == item.answer
    stages = parse_stages(tagged.text)
    assert items["plain"].text == " ".join(stages[s] for s in ("SUMMARY", "CAPTION", "REASONING"))
    assert not any(tag in items["plain"].text for tag in STAGE_TAGS)
    assert items["direct"].text == f"<CONCLUSION> {tagged.answer} </CONCLUSION>"
    with pytest.raises(ValueError, match="unknown answer style"):
        make_item(1, category, answer_style="terse")


def test_cli_answer_style(tmp_path):
    assert synth.main(["--out", str(tmp_path / "p"), "--n", "3", "--seed", "2", "--n-test", "2",
                       "--answer-style", "direct", "--no-progress"]) == 0
    for name in ("train.jsonl", "test.jsonl"):
        for rec in read_jsonl(tmp_path / "p" / name):
            assert rec["conversations"][1]["value"] == f"<CONCLUSION> {rec['answer']} </CONCLUSION>"


def test_judge_data_compares_a_right_and_a_changed_stage(tmp_path):
    import re
    from dataset.cot_format import parse_stages
    plain = generate(tmp_path / "plain", 12, 3, n_test=3, progress=False)
    judged = generate(tmp_path / "judged", 12, 3, n_test=3, judge_data=0.5, progress=False)
    recs = read_jsonl(judged["train"])
    assert read_jsonl(plain["train"]) == recs[:12]  # the items themselves are unchanged
    assert (tmp_path / "plain" / "test.tsv").read_bytes() == (tmp_path / "judged" / "test.tsv").read_bytes()
    judge = recs[12:]
    assert len(judge) == 6 and all(r["category"] == "judge" for r in judge)
    items = {r["image"]: r for r in recs[:12]}
    for r in judge:
        source = items[r["image"]]  # made from a training item, with that item's image
        prompt, verdict = r["conversations"][0]["value"], r["conversations"][1]["value"]
        assert prompt.startswith("<image>\n") and source["conversations"][0]["value"][len("<image>\n"):] in prompt
        k = int(re.fullmatch(r"Since .*, I choose response ([12])\.", verdict).group(1))
        responses = dict(re.findall(r"\nResponse ([12]): (.*)", prompt))
        right = parse_stages(source["conversations"][1]["value"])[r["stage"]]
        assert responses[str(k)] == right and responses[str(3 - k)] != right
        a, b = responses["1"].split(" "), responses["2"].split(" ")
        changed = {(x.rstrip(".,"), y.rstrip(".,")) for x, y in zip(a, b) if x != y}
        assert len(a) == len(b) and len(changed) == 1  # one value word changed (everywhere it occurs)
    with pytest.raises(ValueError, match="fraction"):
        generate(tmp_path / "bad", 4, 3, judge_data=1.5, progress=False)


def test_category_weights_mix_the_training_items_only(tmp_path):
    from dataset.synth import category_sequence, parse_category_weights
    weights = parse_category_weights("color=0.5,count=2")
    assert weights == {"color": 0.5, "count": 2.0}
    seq = category_sequence(list(CATEGORIES), weights, 650)
    counts = Counter(seq)  # weights 0.5, 1, 1, 1, 2, 1 of 6.5: shares exact over whole periods
    assert counts["color"] == 50 and counts["count"] == 200 and counts["shape"] == 100
    assert category_sequence(list(CATEGORIES), weights, 100) == seq[:100]  # item i does not depend on n
    assert category_sequence(list(CATEGORIES), None, 7) == list(CATEGORIES) + [CATEGORIES[0]]
    paths = generate(tmp_path / "w", 26, 3, n_test=12, category_weights=weights, progress=False)
    train, test = read_jsonl(paths["train"]), read_jsonl(paths["test"])
    assert [r["category"] for r in train] == seq[:26]
    assert Counter(r["category"] for r in test) == Counter({c: 2 for c in CATEGORIES})  # held-out stays even
    for r in train:  # an item's category is the one its text answers
        check = make_item(item_rng(3, "train", int(r["id"].split("-")[1]) - 1), r["category"])
        assert check.text == r["conversations"][1]["value"]
    for bad, why in (("colour=1", "expected CATEGORY=WEIGHT"), ("count=x", "not a number"),
                     ("count=-1", ">= 0"), ("count", "expected CATEGORY=WEIGHT")):
        with pytest.raises(ValueError, match=why):
            parse_category_weights(bad)
    assert synth.main(["--out", str(tmp_path / "cli"), "--n", "12", "--seed", "1", "--n-test", "6", "--no-progress",
                       "--category-weights", "shape=0,position=0,chart=0,count=0,arithmetic=0"]) == 0
    assert {r["category"] for r in read_jsonl(tmp_path / "cli" / "train.jsonl")} == {"color"}
    assert synth.main(["--out", str(tmp_path / "bad"), "--n", "4", "--seed", "1", "--category-weights", "hue=2"]) == 2


def _is_pair(record) -> bool:
    return "relative to" in record["conversations"][0]["value"]


def test_position_pairs_share_changes_the_training_position_items_only(tmp_path):
    # the default share draws exactly the items drawn before the option existed (an explicit 0.5 = none)
    for i in range(40):
        default = make_item(item_rng(5, "train", i), "position")
        explicit = make_item(item_rng(5, "train", i), "position", pair_share=0.5)
        assert default.text == explicit.text and default.image.tobytes() == explicit.image.tobytes()
    assert all("relative to" in make_item(item_rng(5, "train", i), "position", pair_share=1.0).question
               for i in range(30))
    assert not any("relative to" in make_item(item_rng(5, "train", i), "position", pair_share=0.0).question
                   for i in range(30))
    cats = ["position"]
    even = generate(tmp_path / "even", 60, 4, n_test=60, categories=cats, progress=False)
    most = generate(tmp_path / "most", 60, 4, n_test=60, categories=cats, position_pairs=0.9, progress=False)
    pairs_even = sum(map(_is_pair, read_jsonl(even["train"])))
    pairs_most = sum(map(_is_pair, read_jsonl(most["train"])))
    assert pairs_most >= 48 and pairs_most > pairs_even + 10  # 54 expected of 60, against 30
    assert read_jsonl(even["test"]) == read_jsonl(most["test"])  # the held-out set is the same
    assert (even["tsv"]).read_bytes() == (most["tsv"]).read_bytes()
    for r in read_jsonl(most["train"]):  # a record is the item its seed draws at that share
        i = int(r["id"].split("-")[1]) - 1
        assert make_item(item_rng(4, "train", i), "position", pair_share=0.9).text == r["conversations"][1]["value"]
    with pytest.raises(ValueError, match=r"position pair share must be in \[0, 1\], got 1.5"):
        generate(tmp_path / "bad", 4, 3, position_pairs=1.5, progress=False)
    assert synth.main(["--out", str(tmp_path / "cli"), "--n", "20", "--seed", "2", "--n-test", "4", "--no-progress",
                       "--categories", "position", "--position-pairs", "1"]) == 0
    assert all(map(_is_pair, read_jsonl(tmp_path / "cli" / "train.jsonl")))
    assert synth.main(["--out", str(tmp_path / "cli2"), "--n", "4", "--seed", "1", "--position-pairs", "-0.1"]) == 2


def test_run_option_for_position_pairs_is_checked_and_names_the_data(tmp_path):
    from finetune import arguments, launch
    opts, _ = arguments.parse(["--synth-position-pairs", "2", "--synth-category-weights", "hue=1"], launcher=True)
    with pytest.raises(arguments.ConfigError) as info:
        arguments.check(opts, cuda=False, launcher=True)
    assert "--synth-position-pairs: position pair share must be in [0, 1], got 2" in info.value.problems
    assert any(p.startswith("--synth-category-weights:") for p in info.value.problems)  # every problem at once
    opts, _ = arguments.parse(["--synth-n", "6", "--synth-n-test", "6", "--data-dir", str(tmp_path),
                               "--synth-position-pairs", "1"], launcher=True)
    out = launch.synthetic_data(opts)
    assert out.name.endswith("-pp1-n6-t6-s7") and (out / ".complete").is_file()
    positions = [r for r in read_jsonl(out / "train.jsonl") if r["category"] == "position"]
    assert positions and all(map(_is_pair, positions))
