"""inference.batch_generate: rows with their own options in one batch, and rows joining a running batch,
give exactly what each row gives alone (float64 tiny model, seeded generators)."""
import threading

import torch

from inference.batch_generate import BatchDecoder, RowRequest, generate_rows
from inference.image import image_size_of
from inference.options import SamplingOptions
from inference.prompt import build_prompt
from inference.sampling import make_generator


def _prompt(tok, model, text, image=False):
    return build_prompt(tok, text, image_length=model.args.image_length, template="chat_old", image=image)


def _embeds(model, seed):
    g = torch.Generator().manual_seed(seed)
    h, w = image_size_of(model.args)
    with torch.no_grad():
        return model.encode_images(torch.randn(1, 3, h, w, generator=g, dtype=torch.float64))  # [1, L, H]


def _alone(model, tok, request_factory, embeds=None):
    return generate_rows(model, tok, [request_factory()], embeds)[0]


def test_rows_joining_a_running_batch_equal_rows_decoded_alone(tiny_vlm, one_thread):
    model, tok = tiny_vlm
    image = _embeds(model, 0)
    sampled = SamplingOptions(temperature=1.0, top_p=0.9)
    factories = {  # fresh requests (fresh generators) each time they are made
        "long": lambda: RowRequest(_prompt(tok, model, "Tell me a long story about " + "circles " * 6),
                                   SamplingOptions(), 14),
        "image": lambda: RowRequest(_prompt(tok, model, "Colour?", image=True), sampled, 9,
                                    generator=make_generator(3)),
        "short": lambda: RowRequest(_prompt(tok, model, "Hi"), SamplingOptions(temperature=0.7), 6,
                                    generator=make_generator(4)),
    }
    expected = {"long": _alone(model, tok, factories["long"]), "image": _alone(model, tok, factories["image"], image),
                "short": _alone(model, tok, factories["short"])}
    decoder = BatchDecoder(model, tok)
    rows = dict(zip(["long"], decoder.add([factories["long"]()], tags=["long"])))
    for _ in range(3):
        decoder.step()
    joined = decoder.add([factories["image"](), factories["short"]()], image, ["image", "short"])
    rows.update(zip(["image", "short"], joined))
    assert len(decoder) == 3 and decoder.width >= len(_prompt(tok, model, "Colour?", image=True))
    seen = set()
    while len(decoder):
        seen.update(tag for tag, row in decoder.step() if row.finish)
    assert seen == {"long", "image", "short"}
    for name, row in rows.items():
        assert row.tokens == expected[name].tokens and row.finish == expected[name].finish, name


def test_stop_strings_caps_and_cancel_per_row(tiny_vlm, one_thread):
    model, tok = tiny_vlm
    p = _prompt(tok, model, "Count to ten")
    whole = generate_rows(model, tok, [RowRequest(p, SamplingOptions(), 12)])[0]
    assert whole.finish == "length" and len(whole.tokens) == 12
    stop = whole.text[len(whole.text) // 2:len(whole.text) // 2 + 2]
    cancel = threading.Event()
    cancel.set()
    rows = generate_rows(model, tok, [RowRequest(p, SamplingOptions(), 12, stop=(stop,)),
                                      RowRequest(p, SamplingOptions(), 5),
                                      RowRequest(p, SamplingOptions(), 12, cancel=cancel)])
    assert rows[0].finish == "stop" and rows[0].text == whole.text[:whole.text.index(stop)]
    assert rows[1].finish == "length" and rows[1].tokens == whole.tokens[:5]
    assert rows[2].finish == "cancelled" and rows[2].tokens == []
