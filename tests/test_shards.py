"""WebDataset shards for pretraining: records -> shards -> samples round trip, disjoint shares for
data-parallel ranks and loader workers, a brace pattern, and bad shard samples named."""
import io
import json
import tarfile

import pytest
import torch

from dataset import ImageProcessor, TextProcessor
from dataset.pretrain_records import PretrainDataset, SampleEncoder
from dataset.shards import ShardStream, brace_pattern, expand_pattern, main, write_shards


@pytest.fixture
def corpus(write_records):
    """12 records of every form (captions, interleaved, text, a conversation) with PNG images."""
    imgs = [f"im/{i}.png" for i in range(3)]
    recs = [{"id": f"c{i}", "image": imgs[i % 3], "text": f"caption number {i}"} for i in range(8)]
    recs += [{"id": "d0", "images": imgs[:2], "text": "see <image> and <image> here"},
             {"id": "t0", "text": "plain words"}, {"id": "t1", "text": "more plain words"},
             {"id": "v0", "image": imgs[2], "conversations": [{"from": "human", "value": "<image>\nWhat?"},
                                                              {"from": "gpt", "value": "A thing."}]}]
    return write_records(recs, images=imgs)


@pytest.fixture
def processors(tiny_tokenizer):
    return ImageProcessor(8), TextProcessor(tiny_tokenizer, max_length=256, image_length=4)


def test_round_trip_records_shards_samples(corpus, processors, tmp_path):
    out = write_shards([str(corpus)], str(tmp_path / "sh" / "part-%04d.tar"), shard_size=5)
    assert out["samples"] == 12 and len(out["shards"]) == 3 and not out["problems"]
    assert out["pattern"] == str(tmp_path / "sh" / "part-{0000..0002}.tar")
    assert expand_pattern(out["pattern"]) == out["shards"]
    direct = PretrainDataset(*processors, None, str(corpus))
    want = {direct[i]["question_id"]: direct[i] for i in range(len(direct))}
    stream = ShardStream(out["pattern"], SampleEncoder(*processors), epochs=1, shuffle_buffer=4, rank=0, world_size=1)
    got = {s["question_id"]: s for s in stream}
    assert got.keys() == want.keys()
    for qid, sample in want.items():
        for key, value in sample.items():
            if key == "vision":
                for k in value:
                    assert torch.equal(value[k], got[qid]["vision"][k]), (qid, k)
            elif isinstance(value, torch.Tensor):
                assert torch.equal(value, got[qid][key]), (qid, key)
            else:
                assert value == got[qid][key], (qid, key)


def test_ranks_and_workers_see_disjoint_samples(corpus, processors, tmp_path):
    out = write_shards([str(corpus)], str(tmp_path / "s-%03d.tar"), shard_size=2)  # 6 shards
    ids = lambda stream: [s["question_id"] for s in stream]
    ranks = [ids(ShardStream(out["pattern"], SampleEncoder(*processors), epochs=1, rank=r, world_size=2, seed=3))
             for r in range(2)]
    assert ranks[0] and ranks[1] and not set(ranks[0]) & set(ranks[1])
    assert sorted(ranks[0] + ranks[1]) == sorted(f"{k}" for k in ["c0", "c1", "c2", "c3", "c4", "c5", "c6", "c7",
                                                                  "d0", "t0", "t1", "v0"])
    # two loader workers per rank: 4 consumers, still disjoint and complete
    def with_workers(rank):
        stream = ShardStream(out["pattern"], SampleEncoder(*processors), epochs=1, rank=rank, world_size=2, seed=3)
        return [s["question_id"] for s in torch.utils.data.DataLoader(stream, batch_size=None, num_workers=2)]
    w0, w1 = with_workers(0), with_workers(1)
    assert len(w0) + len(w1) == 12 and len(set(w0) | set(w1)) == 12
    # fewer shards than consumers: every consumer reads every shard and keeps its share of samples
    few = write_shards([str(corpus)], str(tmp_path / "one-%03d.tar"), shard_size=100)
    parts = [ids(ShardStream(few["pattern"], SampleEncoder(*processors), epochs=1, rank=r, world_size=3))
             for r in range(3)]
    assert sum(map(len, parts)) == 12 and len(set().union(*map(set, parts))) == 12


def test_same_seed_same_order_and_endless_epochs(corpus, processors, tmp_path):
    out = write_shards([str(corpus)], str(tmp_path / "s-%03d.tar"), shard_size=3)
    take = lambda seed: [s["question_id"] for _, s in zip(range(30), ShardStream(
        out["pattern"], SampleEncoder(*processors), seed=seed, shuffle_buffer=5, rank=0, world_size=1))]
    a = take(1)
    assert a == take(1) and a != take(2)
    assert sorted(a[:12]) == sorted(set(a)) and len(a) == 30  # each epoch is a permutation; it goes on


def test_bad_shard_samples_are_named(tmp_path):
    path = tmp_path / "bad-000.tar"
    with tarfile.open(path, "w") as tar:
        for name, data in [("k1.json", b"{not json"), ("k2.json", json.dumps({"text": "<image> x",
                                                                              "image_files": ["0.png"]}).encode()),
                           ("k3.txt", b"just text")]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    stream = ShardStream(str(path), epochs=1, rank=0, world_size=1)
    got = list(stream)
    assert [r.text for r, _ in got] == ["just text"]
    reasons = sorted(str(p) for p in stream.problems)
    assert "bad-000.tar [id k1]: k1.json is not valid JSON" in reasons[0]
    assert "k2.0.png not in the shard" in reasons[1]
    with pytest.raises(Exception, match="k1.json is not valid JSON"):
        list(ShardStream(str(path), epochs=1, strict=True, rank=0, world_size=1, shuffle_buffer=1))


def test_cli_writes_shards_and_prints_the_pattern(corpus, tmp_path, capsys):
    assert main([str(corpus), str(tmp_path / "c-%06d.tar"), "--shard-size", "4"]) == 0
    printed = capsys.readouterr().out
    assert "wrote 12 samples in 3 shard(s)" in printed
    assert "c-{000000..000002}.tar" in printed
    assert brace_pattern("x-%03d.tar", 1) == "x-000.tar"
    assert main([str(corpus), str(tmp_path / "no-number.tar")]) == 2


def test_finetune_options_take_shard_patterns(corpus, tmp_path):
    from finetune import arguments
    from finetune.finetune import sat_argv
    out = write_shards([str(corpus)], str(tmp_path / "s-%03d.tar"), shard_size=5)
    opts, _ = arguments.parse(["--stage", "pretrain", "--train-data", out["pattern"], "--train-iters", "2"],
                              launcher=False)
    arguments.check(opts, cuda=False)
    assert arguments.streams(opts)
    opts.experiment_name, opts.summary_dir = "x", str(tmp_path)
    argv = sat_argv(opts, "ds.json", 0, None)
    assert "--iterable-dataset" in argv and out["pattern"] in argv
    missing, _ = arguments.parse(["--stage", "pretrain", "--train-data", str(tmp_path / "s-{000..004}.tar")],
                                 launcher=False)
    with pytest.raises(arguments.ConfigError, match=r"2 shard\(s\) missing"):
        arguments.check(missing, cuda=False)
    packed, _ = arguments.parse(["--stage", "pretrain", "--packing", "--train-data", out["pattern"]], launcher=False)
    with pytest.raises(arguments.ConfigError, match="streamed data .* is not packed"):
        arguments.check(packed, cuda=False)
    sft, _ = arguments.parse(["--train-data", out["pattern"]], launcher=False)
    with pytest.raises(arguments.ConfigError, match="--stage pretrain only"):
        arguments.check(sft, cuda=False)
