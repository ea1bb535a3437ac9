"""--data-mix: weighted, seeded, resumable sampling of sources, and the per-source modality counts
(samples, image/text/trained tokens) that the run logs."""
import itertools

import pytest
import torch

from dataset import DataCollator
from dataset.data_mix import DataMix, MapStream, parse_data_mix
from finetune.token_report import TokenReport, batch_counts, summarise


def toy_sources(sizes=(50, 30, 20)):
    """Indexable sources whose samples name their source and index."""
    return [[{"name": f"s{k}-{i}"} for i in range(n)] for k, n in enumerate(sizes)]


def mix(weights=(0.6, 0.3, 0.1), seed=7, start=0, rank=0, world_size=1):
    streams = [MapStream(ds, seed=seed, rank=rank, world_size=world_size) for ds in toy_sources()]
    return DataMix(streams, weights, ["a", "b", "c"], seed=seed, start=start, rank=rank, world_size=world_size)


def take(stream, n, skip=0):
    return [s["name"] for s in itertools.islice(iter(stream), skip, skip + n)]


def test_parse_data_mix():
    sources = parse_data_mix("captions.jsonl:0.6,docs/{000..015}.tar:0.3,text.jsonl:0.1")
    assert [s.spec for s in sources] == ["captions.jsonl", "docs/{000..015}.tar", "text.jsonl"]
    assert [round(s.weight, 6) for s in sources] == [0.6, 0.3, 0.1]
    assert [s.weight for s in parse_data_mix("a/{x,y}.tar:3,b.jsonl:1")] == [0.75, 0.25]  # commas in braces
    for bad in ("a.jsonl", "a.jsonl:0", "a.jsonl:x,b.jsonl:1"):
        with pytest.raises(ValueError, match="--data-mix entry"):
            parse_data_mix(bad)


def test_observed_mix_matches_the_weights():
    names = take(mix(), 6000)
    shares = [sum(n.startswith(f"s{k}-") for n in names) / len(names) for k in range(3)]
    for got, want in zip(shares, (0.6, 0.3, 0.1)):
        assert abs(got - want) < 0.02, shares
    first = [n for n in names if n.startswith("s2-")][:20]
    assert sorted(first) == sorted(f"s2-{i}" for i in range(20))  # a source runs through all its samples


def test_same_seed_same_order_and_resume_continues():
    a = take(mix(seed=7), 300)
    assert a == take(mix(seed=7), 300)
    assert a != take(mix(seed=8), 300)
    assert take(mix(seed=7, start=137), 163) == a[137:]  # resumed after 137 samples: the same continuation


def test_ranks_draw_disjoint_samples_of_a_source():
    per_rank = [take(mix(weights=(1, 1, 1), rank=r, world_size=2), 15) for r in range(2)]  # within one epoch
    assert not set(per_rank[0]) & set(per_rank[1])
    assert len(set(per_rank[0])) == 15


def test_token_counts_per_source(tiny_tokenizer, write_records):
    from dataset import ImageProcessor, TextProcessor
    from dataset.pretrain_records import PretrainDataset, token_counts
    path = write_records([{"image": "a.png", "text": "a caption"}, {"text": "only text"}], images=("a.png",))
    ds = PretrainDataset(ImageProcessor(8), TextProcessor(tiny_tokenizer, 128, image_length=4), None, str(path))
    samples = [dict(ds[0], source=0), dict(ds[1], source=1), dict(ds[0], source=0)]
    counts = batch_counts(DataCollator()(samples), 2)
    direct = [token_counts(s) for s in samples]
    assert counts[0].tolist() == [2, 2 * direct[0]["image_tokens"], 2 * direct[0]["text_tokens"],
                                  2 * direct[0]["trained_tokens"]]
    assert counts[1].tolist() == [1, 0, direct[1]["text_tokens"], direct[1]["trained_tokens"]]
    packed = DataCollator()(samples[:2])
    packed["segment_ids"][0, -2:] = 2  # as if the row held two samples
    assert batch_counts(packed, 2)[:, 0].tolist() == [2, 1]
    summary = summarise(counts, ["caps", "text"])
    assert summary["overall"]["samples"] == 3 and summary["sources"]["caps"]["share"] == round(2 / 3, 4)
    assert summary["sources"]["text"]["image_to_text"] == 0.0
    logged = []

    class History:
        def add(self, kind, record):
            logged.append((kind, record))
    report = TokenReport(["caps", "text"], interval=2, total_steps=5, reduce=lambda v: torch.tensor(v),
                         printer=lambda line: logged.append(("print", line)), history=History())
    report.observe(DataCollator()(samples))
    assert report.end_step(1) is None and not logged  # not a log step
    report.end_step(2)
    assert logged[0][0] == "print" and "overall" in logged[0][1] and "caps" in logged[0][1]
    assert logged[1] == ("data_mix", {"step": 2, **summary})


def test_resume_with_a_shard_source(write_records, tmp_path):
    from dataset.shards import ShardStream, write_shards
    path = write_records([{"id": f"t{i}", "text": f"words {i}"} for i in range(9)])
    out = write_shards([str(path)], str(tmp_path / "s-%02d.tar"), shard_size=3)

    def make(start=0):
        shards = ShardStream(out["pattern"], lambda record, images: {"name": record.id}, seed=1, shuffle_buffer=4,
                             rank=0, world_size=1)
        return DataMix([MapStream(toy_sources()[0], seed=1, rank=0, world_size=1), shards], [0.5, 0.5],
                       ["map", "tar"], seed=1, start=start, rank=0, world_size=1)
    straight = take(make(), 60)
    assert any(n.startswith("t") for n in straight) and any(n.startswith("s0-") for n in straight)
    assert take(make(start=23), 37) == straight[23:]


def test_a_resumed_loader_continues_with_two_workers():
    """DataLoader with 2 workers: skipping m batches by construction gives the batches m, m+1, ... of a
    fresh loader (batch j comes from worker j mod 2)."""
    def loader(skip=0):
        streams = [MapStream(ds, seed=3, rank=0, world_size=1) for ds in toy_sources()]
        data = DataMix(streams, (0.5, 0.3, 0.2), ["a", "b", "c"], seed=3, rank=0, world_size=1,
                       skip_batches=skip, batch_size=4)
        return iter(torch.utils.data.DataLoader(data, batch_size=4, num_workers=2,
                                                collate_fn=lambda b: [s["name"] for s in b]))
    fresh = [next(it) for it in [loader()] for _ in range(12)]
    resumed = loader(skip=7)
    assert [next(resumed) for _ in range(5)] == fresh[7:]
