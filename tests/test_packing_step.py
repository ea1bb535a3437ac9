"""The training step that wastes nothing: no dense mask for a right-padded batch, no per-layer host
synchronisation, the LM head and the loss on labelled positions only; same loss and gradients as the
dense-mask, full-logits step it replaces (fp32)."""
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from dataset import DataCollator, TextProcessor, Turn, attention_mask_from_segments, vision_inputs
from finetune.data import labelled_positions, split_batch
from finetune.step import selected_token_loss, token_loss


def make_samples(tokenizer, config, answers, images_per_sample=None, seed=0):
    """Conversation samples of the tiny model's layout (64 image tokens, 56 px images)."""
    tp = TextProcessor(tokenizer, max_length=1024, image_length=config.image_length)
    g = torch.Generator().manual_seed(seed)
    size = config.eva.image_size
    out = []
    for i, answer in enumerate(answers):
        n_img = 1 if images_per_sample is None else images_per_sample[i]
        markers = "<image>\n" * n_img
        enc = tp.encode_turns([Turn("user", markers + f"Question {i}?"), Turn("assistant", answer)])
        vision = vision_inputs(torch.randn(n_img, 3, size[0], size[1], generator=g)) if n_img else {}
        out.append(dict(enc, question_id=f"q{i}", vision=vision))
    return out


def dense_reference(model, batch):
    """The step as it was: a [B,1,n,n] mask from the segments, logits everywhere, shifted loss."""
    inputs, labels = split_batch(batch, "cpu")
    inputs["attention_mask"] = attention_mask_from_segments(batch["segment_ids"])
    logits = model(**inputs)[0]
    return token_loss(logits, labels)


def lean_step(model, batch):
    inputs, targets = split_batch(batch, "cpu", labelled_only=True)
    logits = model(**inputs)[0]
    return selected_token_loss(logits, targets)


def grads_of(model, loss):
    model.zero_grad(set_to_none=True)
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def assert_same_grads(a, b, tol=1e-5):
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=tol, atol=tol, msg=name)


def test_right_padded_batch_has_no_dense_mask(tiny_tokenizer, tiny_config):
    batch = DataCollator()(make_samples(tiny_tokenizer, tiny_config, ["red", "two circles and three squares"]))
    assert batch["attention_mask"] is None
    inputs, _ = split_batch(batch, "cpu")
    assert "attention_mask" not in inputs


def test_lean_step_equals_dense_mask_full_logits_step(tiny_tokenizer, tiny_config, tiny_model, one_thread):
    """Plain causal attention over right padding and logits at labelled positions only give the loss and
    gradients of the dense block mask with full logits (fp32, 1e-5), images and text-only rows mixed."""
    model = tiny_model.eval()  # no dropout: both steps must see the same network
    samples = make_samples(tiny_tokenizer, tiny_config, ["red", "two circles and three squares on the left", "7"],
                           images_per_sample=[1, 2, 0])
    batch = DataCollator()(samples)
    ref_sum, ref_count = dense_reference(model, batch)
    ref = grads_of(model, ref_sum / ref_count)
    new_sum, new_count = lean_step(model, batch)
    new = grads_of(model, new_sum / new_count)
    assert int(new_count) == int(ref_count) > 0
    torch.testing.assert_close(new_sum, ref_sum, rtol=1e-5, atol=1e-5)
    assert_same_grads(ref, new)


def test_logit_positions_are_the_labelled_rows_of_the_full_logits(tiny_tokenizer, tiny_config, tiny_model):
    batch = DataCollator()(make_samples(tiny_tokenizer, tiny_config, ["red", "blue square"]))
    positions, targets = labelled_positions(batch["labels"])
    b, n = batch["labels"].shape
    assert torch.equal(targets, batch["labels"][:, 1:][batch["labels"][:, 1:] != -100])
    inputs, _ = split_batch(batch, "cpu")
    with torch.no_grad():
        full = tiny_model(**inputs)[0]  # [B, n, V]
        some = tiny_model(**inputs, logit_positions=positions)[0]  # [K, V]
    assert some.shape == (len(positions), full.shape[-1])
    torch.testing.assert_close(some, full.reshape(b * n, -1)[positions])


class HostSyncCounter(TorchDispatchMode):
    """Counts the ops that make the host wait for the device: scalar reads (`bool`, `int`, `.item()`),
    `nonzero` and boolean-mask indexing (whose output size depends on the data). Reading back a tensor
    made from a Python number on the host (SAT's `layer_id=torch.tensor(i)`) is no wait and not counted."""

    def __init__(self):
        super().__init__()
        self.count = 0
        self.host_made = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        out = func(*args, **(kwargs or {}))
        if name in ("lift_fresh", "lift_fresh_copy"):
            self.host_made.add(id(out))
        elif name == "_local_scalar_dense" and id(args[0]) in self.host_made:
            pass
        elif name in ("_local_scalar_dense", "nonzero", "masked_select"):
            self.count += 1
        elif name in ("index", "index_put", "index_put_"):
            indices = args[1] if len(args) > 1 else []
            if any(isinstance(t, torch.Tensor) and t.dtype == torch.bool for t in indices or []):
                self.count += 1
        return out


def test_no_host_synchronisation_per_layer(tiny_tokenizer, tiny_config, one_thread):
    """The training forward stops the host a fixed number of times, however many layers the model has."""
    from models.cogvlm import CogVLMModel
    batch = DataCollator()(make_samples(tiny_tokenizer, tiny_config, ["red", "two circles"], images_per_sample=[1, 0]))
    counts = {}
    for layers in (1, 4):
        config = tiny_config.to_dict() | {"num_layers": layers}
        model = CogVLMModel(CogVLMModel.get_args(**config)).train()
        inputs, _ = split_batch(batch, "cpu", labelled_only=True)
        with HostSyncCounter() as counter:
            model(**inputs)
        counts[layers] = counter.count
    assert counts[1] == counts[4], counts
    # once per forward: the two routing index lists, SAT's vocab-parallel embedding (two masked writes),
    # the image-span count check and the image scatter
    assert counts[4] <= 6, counts


def test_lean_step_keeps_stage_loss_weights(tiny_tokenizer, tiny_config, tiny_model, one_thread):
    """Per-token loss weights give the same weighted loss and gradients as the full-logits token_loss."""
    from finetune.data import split_labelled
    model = tiny_model.eval()
    batch = DataCollator()(make_samples(tiny_tokenizer, tiny_config, ["red square", "two circles"]))
    g = torch.Generator().manual_seed(3)
    batch["loss_weights"] = torch.rand(batch["labels"].shape, generator=g) * (batch["labels"] != -100)
    inputs, labels = split_batch(batch, "cpu")
    ref_sum, ref_w = token_loss(model(**inputs)[0], labels, batch["loss_weights"])
    ref = grads_of(model, ref_sum / ref_w)
    inputs, targets, weights = split_labelled(batch, "cpu")
    new_sum, new_w = selected_token_loss(model(**inputs)[0], targets, weights)
    new = grads_of(model, new_sum / new_w)
    torch.testing.assert_close(new_w, ref_w)
    torch.testing.assert_close(new_sum, ref_sum, rtol=1e-5, atol=1e-5)
    assert_same_grads(ref, new)


class _Timer:
    def start(self):
        pass

    def stop(self):
        pass


class AccumulatingEngine:
    """What TrainStep sees of a DeepSpeed engine, and what DeepSpeed does with the loss it returns:
    each micro-batch's loss is divided by the accumulation steps before backward (scale_wrt_gas)."""

    def __init__(self, model, steps):
        self.module, self.steps, self.micro = model, steps, 0
        self.optimizer = torch.optim.SGD(model.parameters(), lr=0.0)

    def __call__(self, **kw):
        return self.module(**kw)

    def parameters(self):
        return self.module.parameters()

    def gradient_accumulation_steps(self):
        return self.steps

    def is_gradient_accumulation_boundary(self):
        return self.micro % self.steps == self.steps - 1

    def backward(self, loss):
        (loss / self.steps).backward()
        self.micro += 1


def _accumulated_grads(model, batches, steps):
    """Gradients of one optimizer step of TrainStep over `batches` (micro-batches) and its logged loss."""
    from types import SimpleNamespace
    from finetune.step import BetweenSteps, History, Schedule, TrainStep
    step = TrainStep(History(), BetweenSteps(), schedule=Schedule(lr=0.0, total_iters=1))
    engine, data = AccumulatingEngine(model, steps), iter(batches)
    model.zero_grad(set_to_none=True)
    for _ in range(steps):
        loss, _ = step(data, engine, SimpleNamespace(iteration=0), lambda name: _Timer())
        engine.backward(loss)
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return grads, step.history.train[-1]["loss"]


def test_accumulation_two_by_two_equals_batch_four(tiny_tokenizer, tiny_config, tiny_model, one_thread):
    """The loss is normalised over the labelled tokens of the whole accumulated batch: 2 micro-batches of
    2 samples (of different label counts) give batch 4's gradient and logged loss."""
    model = tiny_model.eval()
    samples = make_samples(tiny_tokenizer, tiny_config, ["red", "two circles and three squares on the left", "7",
                                                         "a small blue triangle near the top"])
    four, four_loss = _accumulated_grads(model, [DataCollator()(samples)], steps=1)
    two, two_loss = _accumulated_grads(model, [DataCollator()(samples[:2]), DataCollator()(samples[2:])], steps=2)
    assert abs(four_loss - two_loss) < 1e-5 * four_loss
    assert_same_grads(four, two)


def test_text_only_batch_still_runs_the_vit_and_experts_when_asked(tiny_tokenizer, tiny_config, tiny_model):
    """ZeRO-3's need: with run_every_module a text-only batch gives the same loss but gradients (zeros)
    reach the ViT, projector and expert weights, so every rank runs the same modules."""
    from models.cogvlm import run_every_module
    model = tiny_model.eval()
    batch = DataCollator()(make_samples(tiny_tokenizer, tiny_config, ["seven", "no"], images_per_sample=[0, 0]))
    plain_sum, _ = lean_step(model, batch)
    plain = grads_of(model, plain_sum)
    run_every_module(model)
    every_sum, _ = lean_step(model, batch)
    every = grads_of(model, every_sum)
    run_every_module(model, False)
    torch.testing.assert_close(every_sum, plain_sum)
    vit = [n for n in every if n.startswith("mixins.eva.vit_model.")]
    experts = [n for n in every if ".vision_" in n]
    assert vit and experts and not any(n.startswith("mixins.eva.vit_model.") for n in plain)
    assert all(every[n].abs().max() == 0 for n in vit + experts)
    for n in plain:
        torch.testing.assert_close(every[n], plain[n])
