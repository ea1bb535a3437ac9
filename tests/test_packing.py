"""--packing: rows planned first-fit-decreasing (seeded, no sample split), each sample its own block of
causal attention with its own positions, masks, labels and images; a packed batch gives the loss and
gradients of the same samples unpacked, in one process and in two data-parallel (gloo) processes."""
import os

import pytest
import torch
import torch.multiprocessing as mp

from dataset import DataCollator
from dataset.packing import PackedDataset, first_fit_decreasing, plan_rows
from finetune.data import split_labelled
from finetune.step import selected_token_loss
from tests.test_packing_step import assert_same_grads, grads_of, make_samples

ANSWERS = ["red", "two circles and three squares on the left", "7", "a small blue triangle", "no", "green",
           "the bar on the right is the tallest one"]
IMAGES = [1, 2, 0, 1, 1, 0, 1]


def test_plan_is_seeded_first_fit_decreasing_and_splits_nothing():
    lengths = [5, 9, 3, 7, 2, 8, 4, 6, 1, 10]
    rows = plan_rows(lengths, capacity=12, seed=3, buffer_size=100)
    assert sorted(i for row in rows for i in row) == list(range(10))  # every sample once, whole
    assert all(sum(lengths[i] for i in row) <= 12 for row in rows)
    assert rows == plan_rows(lengths, capacity=12, seed=3, buffer_size=100)
    assert rows != plan_rows(lengths, capacity=12, seed=4, buffer_size=100)
    assert len(rows) == 5  # 55 tokens in rows of 12: FFD needs the minimum, ceil(55 / 12)
    ffd = first_fit_decreasing(lengths, list(range(10)), 12)
    assert ffd[0] == [9, 4]  # the longest (10) opens the first row; 2 is the first to still fit beside it
    with pytest.raises(ValueError, match="more than a row"):
        first_fit_decreasing([13], [0], 12)


def test_packed_row_keeps_each_samples_positions_masks_labels_and_images(tiny_tokenizer, tiny_config):
    samples = make_samples(tiny_tokenizer, tiny_config, ANSWERS[:3], images_per_sample=IMAGES[:3])
    batch = DataCollator()([samples])  # one row holding three samples
    assert batch["input_ids"].shape[0] == 1 and batch["attention_mask"] is None
    start = 0
    for k, s in enumerate(samples):
        end = start + len(s["input_ids"])
        assert batch["segment_ids"][0, start:end].eq(k + 1).all()
        for key in ("input_ids", "position_ids", "image_embed_mask", "vision_expert_mask", "image_rope_mask"):
            assert torch.equal(batch[key][0, start:end], s[key]), key
        assert batch["position_ids"][0, start] == 0  # positions restart with each sample
        assert batch["labels"][0, start] == -100
        assert torch.equal(batch["labels"][0, start + 1:end], s["labels"][1:])
        start = end
    assert torch.equal(batch["attention_segments"], batch["segment_ids"])
    assert batch["samples_per_row"].tolist() == [3]
    images = torch.cat([s["vision"]["image"] for s in samples if s["vision"]])
    assert torch.equal(batch["vision_image"], images)  # fed in order


def _loss_and_grads(model, batch):
    inputs, targets, _ = split_labelled(batch, "cpu")
    loss_sum, count = selected_token_loss(model(**inputs)[0], targets)
    return loss_sum.detach(), int(count), grads_of(model, loss_sum / count)


def test_packed_batch_equals_the_same_samples_unpacked(tiny_tokenizer, tiny_config, tiny_model, one_thread):
    model = tiny_model.eval()  # no dropout: both batches must see the same network
    samples = make_samples(tiny_tokenizer, tiny_config, ANSWERS, images_per_sample=IMAGES)
    longest = max(len(s["input_ids"]) for s in samples)
    packed = PackedDataset(samples, max_length=2 * longest, seed=0)
    assert len(packed) < len(samples)
    rows = [packed[i] for i in range(len(packed))]
    order = [i for row in packed.rows for i in row]
    ref_sum, ref_count, ref = _loss_and_grads(model, DataCollator()([samples[i] for i in order]))
    new_sum, new_count, new = _loss_and_grads(model, DataCollator()(rows))
    assert new_count == ref_count
    torch.testing.assert_close(new_sum, ref_sum, rtol=1e-5, atol=1e-5)
    assert_same_grads(ref, new)


def _data_parallel_worker(rank, world, port, out_dir):
    """One gloo rank: its half of the samples, packed or not, the TrainStep's normalisation over all
    ranks, gradients averaged as DeepSpeed does; rank 0 writes the averaged gradients."""
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    from models.cogvlm import CogVLMModel
    from models.config import get_preset
    from models.tokenizer import build_tiny_tokenizer
    from finetune.step import global_sums
    config = get_preset("cogvlm-tiny")
    torch.manual_seed(0)
    model = CogVLMModel(CogVLMModel.get_args(**config.to_dict())).eval()
    tokenizer = build_tiny_tokenizer(os.path.join(out_dir, f"tok{rank}", "tokenizer.model"))  # deterministic
    samples = make_samples(tokenizer, config, ANSWERS, images_per_sample=IMAGES)
    mine = samples[rank::world]
    longest = max(len(s["input_ids"]) for s in samples)
    for mode in ("unpacked", "packed"):
        if mode == "packed":
            ds = PackedDataset(mine, max_length=2 * longest, seed=1)
            batch = DataCollator()([ds[i] for i in range(len(ds))])
        else:
            batch = DataCollator()(mine)
        inputs, targets, _ = split_labelled(batch, "cpu")
        loss_sum, count = selected_token_loss(model(**inputs)[0], targets)
        total = global_sums([float(count)], "cpu")[0]
        model.zero_grad(set_to_none=True)
        (loss_sum * (world / total)).backward()  # TrainStep's scaling
        grads = {}
        for name, p in model.named_parameters():
            if p.grad is not None:
                torch.distributed.all_reduce(p.grad)
                grads[name] = p.grad / world  # DeepSpeed averages over the ranks
        loss = global_sums([loss_sum.item()], "cpu")[0] / total
        if rank == 0:
            torch.save({"grads": grads, "loss": loss}, os.path.join(out_dir, f"{mode}.pt"))
    torch.distributed.destroy_process_group()


def test_two_data_parallel_processes_packed_equal_one_process(tiny_tokenizer, tiny_config, tmp_path, one_thread):
    """2 gloo ranks, each packing its half: the loss and averaged gradients of 1 process on all samples."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(_data_parallel_worker, args=(2, port, str(tmp_path)), nprocs=2,
                       join=True, start_method="spawn")
    from models.cogvlm import CogVLMModel
    torch.manual_seed(0)
    model = CogVLMModel(CogVLMModel.get_args(**tiny_config.to_dict())).eval()
    samples = make_samples(tiny_tokenizer, tiny_config, ANSWERS, images_per_sample=IMAGES)
    ref_sum, ref_count, ref = _loss_and_grads(model, DataCollator()(samples))
    for mode in ("unpacked", "packed"):
        got = torch.load(tmp_path / f"{mode}.pt", weights_only=True)
        assert abs(got["loss"] - float(ref_sum) / ref_count) < 1e-5, mode
        assert_same_grads(ref, got["grads"])
