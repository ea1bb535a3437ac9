"""Fine-tuning pieces that need no DeepSpeed process: parts and freeze policies by module ownership,
LoRA (trainable sets, targets, merge), the learning-rate schedule, options and their errors."""
import json
import math

import pytest
import torch

from finetune import arguments
from finetune.lora import LoRAConfig, add_lora, freeze_for_lora, merge_lora, target_linears
from finetune.parts import (PARTS, apply_freeze, check_partition, linear_layers, parse_parts, part_modules,
                            part_parameters, trainable_summary)
from finetune.step import Schedule, token_loss


def _ids(params):
    return {id(p) for p in params}


def _trainable(model):
    return {id(p) for p in model.parameters() if p.requires_grad}


def test_every_parameter_belongs_to_exactly_one_part(tiny_model):
    check_partition(tiny_model)
    parts = part_parameters(tiny_model)
    assert sum(len(ps) for ps in parts.values()) == len(list(tiny_model.parameters()))
    # ownership, not names: the ViT part is exactly the ViT module's parameters
    assert _ids(parts["vit"]) == _ids(tiny_model.mixins["eva"].vit_model.parameters())
    eva = tiny_model.mixins["eva"]
    assert _ids(parts["projector"]) == _ids(eva.linear_proj.parameters()) | {id(eva.boi), id(eva.eoi)}
    assert id(tiny_model.mixins["lm"].lm_head.weight) in _ids(parts["language"])
    assert id(tiny_model.mixins["mlp"].gate_proj[0].weight) in _ids(parts["language"])
    assert id(tiny_model.mixins["mlp"].vision_gate_proj["0"].weight) in _ids(parts["vision_experts"])


@pytest.mark.parametrize("frozen", [["vit"], ["projector"], ["vision_experts"], ["language"],
                                    ["vit", "projector"], [], list(PARTS)])
def test_freeze_policy_freezes_exactly_the_owned_parameters(tiny_model, frozen):
    apply_freeze(tiny_model, frozen)
    parts = part_parameters(tiny_model)
    expected = set().union(*(_ids(parts[p]) for p in PARTS if p not in frozen)) if len(frozen) < len(PARTS) else set()
    assert _trainable(tiny_model) == expected
    summary = trainable_summary(tiny_model)
    for p in PARTS:
        trainable, total = summary[p]
        assert trainable == (0 if p in frozen else total)


def test_parse_parts():
    assert parse_parts("vit, projector") == ["vit", "projector"]
    assert parse_parts(["language"]) == ["language"]
    assert parse_parts("none") == [] and parse_parts(None) == []
    assert parse_parts("all") == list(PARTS)
    with pytest.raises(ValueError, match="unknown part"):
        parse_parts("vision_tower")


def test_lora_vs_full_trainable_sets(tiny_model):
    full = {n for n, p in tiny_model.named_parameters()}
    apply_freeze(tiny_model, [])
    assert {n for n, p in tiny_model.named_parameters() if p.requires_grad} == full
    mixin = add_lora(tiny_model, LoRAConfig(rank=4, alpha=8, targets=("language", "vision_experts")))
    freeze_for_lora(tiny_model)
    check_partition(tiny_model, [mixin])
    assert _trainable(tiny_model) == _ids(mixin.parameters())
    n_linears = len(target_linears(tiny_model, "language")) + len(target_linears(tiny_model, "vision_experts"))
    assert len(mixin.adapters) == n_linears
    expected = sum(4 * (lin.weight.shape[0] + lin.weight.shape[1])
                   for part in ("language", "vision_experts") for _, lin in target_linears(tiny_model, part))
    assert sum(p.numel() for p in tiny_model.parameters() if p.requires_grad) == expected
    # unfreezing a part next to LoRA: the projector trains fully, the rest stays frozen
    freeze_for_lora(tiny_model, trainable_parts=["projector"])
    assert _trainable(tiny_model) == _ids(mixin.parameters()) | _ids(part_parameters(tiny_model)["projector"])


@pytest.mark.parametrize("part", PARTS)
def test_lora_targets_are_linears_owned_by_the_part(tiny_model, part):
    owned = set()
    for m in part_modules(tiny_model)[part]:
        owned |= {id(x) for _, x in linear_layers(m)}
    targets = target_linears(tiny_model, part)
    assert targets and all(id(lin) in owned for _, lin in targets)
    assert all(tiny_model.get_submodule(name) is lin for name, lin in targets)
    assert all(lin is not tiny_model.mixins["lm"].lm_head for _, lin in targets)


def _randomise_adapters(mixin, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for a in mixin.adapters.values():
            a.B.copy_(torch.randn(a.B.shape, generator=g) * 0.05)


def test_lora_starts_as_the_base_model_and_merges_to_the_same_function(tiny_model, image_batch):
    inputs = image_batch([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        base = tiny_model(**inputs)[0]
    mixin = add_lora(tiny_model, LoRAConfig(rank=4, alpha=8, targets=("all",)))
    with torch.no_grad():
        assert torch.equal(tiny_model(**inputs)[0], base)  # B = 0: unchanged at start
    _randomise_adapters(mixin)
    with torch.no_grad():
        adapted = tiny_model(**inputs)[0]
    assert (adapted - base).abs().max() > 1e-3  # the adapters do change the function
    assert merge_lora(tiny_model) == len(mixin.adapters)
    assert "lora" not in tiny_model.mixins
    with torch.no_grad():
        merged = tiny_model(**inputs)[0]
    torch.testing.assert_close(merged, adapted, rtol=1e-4, atol=1e-5)


def test_merge_lora_checkpoint_loads_as_a_plain_model(tiny_model, tiny_tokenizer, image_batch, tmp_path):
    """A LoRA training checkpoint (model_config.json with "lora") -> merged official checkpoint."""
    from finetune.checkpoint import write_model_files
    from finetune.merge_lora import main as merge_main
    from models.checkpoint import CheckpointError, save_checkpoint
    from models.cogvlm import CogVLMModel
    config = LoRAConfig(rank=2, alpha=4, targets=("language", "vit"))
    mixin = add_lora(tiny_model, config)
    _randomise_adapters(mixin, seed=1)
    inputs = image_batch([[11, 12, 13]])
    with torch.no_grad():
        adapted = tiny_model(**inputs)[0]
    ckpt = tmp_path / "run"
    save_checkpoint(tiny_model, ckpt, {}, iteration=7)
    write_model_files(tiny_model, ckpt, tiny_tokenizer.model_file, lora_config=config)
    assert json.loads((ckpt / "model_config.json").read_text())["lora"]["rank"] == 2
    with pytest.raises(CheckpointError, match="unexpected"):
        CogVLMModel.from_pretrained(str(ckpt))  # adapters are not part of the official model
    assert merge_main([str(ckpt)]) == 0
    merged, _ = CogVLMModel.from_pretrained(str(ckpt / "merged"))
    assert (ckpt / "merged" / "latest").read_text().strip() == "7"
    assert (ckpt / "merged" / "tokenizer.model").is_file()
    with torch.no_grad():
        torch.testing.assert_close(merged.eval()(**inputs)[0], adapted, rtol=1e-4, atol=1e-5)
    assert merge_main([str(ckpt / "merged")]) == 2  # not a LoRA checkpoint: a clear error, no traceback


def test_schedule_matches_sat_annealing_lr_on_a_fresh_run():
    from sat.training.learning_rates import AnnealingLR
    for style in ("cosine", "linear", "constant"):
        params = [torch.nn.Parameter(torch.zeros(1))]
        opt = torch.optim.SGD([{"params": params, "lr": 1.0}], lr=1.0)
        total, warmup, lr = 50, 0.1, 3e-3
        sat = AnnealingLR(opt, start_lr=lr, warmup_iter=warmup * total, num_iters=total, decay_style=style,
                          last_iter=0, decay_ratio=0.1, auto_warmup_steps=0)
        ours = Schedule(lr=lr, total_iters=total, warmup=warmup, style=style, decay_ratio=0.1)
        for step in range(1, total + 1):  # SAT sets the lr of step k before it, then steps once after
            assert math.isclose(opt.param_groups[0]["lr"], ours(step), rel_tol=1e-12), (style, step)
            sat.step()


def test_token_loss_counts_labelled_tokens_only():
    logits = torch.randn(2, 5, 11)
    labels = torch.tensor([[-100, -100, 3, 4, -100], [-100, 1, 2, -100, -100]])
    loss_sum, count = token_loss(logits, labels)
    assert int(count) == 4
    mean = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 11), labels[:, 1:].reshape(-1),
                                             ignore_index=-100)
    torch.testing.assert_close(loss_sum / count, mean)


# ----------------------------------------------------------------------------- options

def _parse(argv, monkeypatch=None, env=None):
    for k, v in (env or {}).items():
        monkeypatch.setenv(k, v)
    opts, rest = arguments.parse(argv, launcher=True)
    return opts, rest


def test_every_option_has_an_environment_variable(monkeypatch):
    opts, rest = _parse(["--batch-size", "3", "--checkpoint-activations"], monkeypatch,
                        {"COGCOT_LR": "0.02", "COGCOT_TRAIN_DATA": "a.jsonl,b.jsonl", "COGCOT_BATCH_SIZE": "9",
                         "COGCOT_STRICT_DATA": "1", "COGCOT_FINETUNE_MODE": "lora"})
    assert opts.lr == 0.02 and opts.train_data == ["a.jsonl", "b.jsonl"] and opts.strict_data
    assert opts.finetune_mode == "lora"
    assert opts.batch_size == 3  # the command line wins
    assert rest == ["--checkpoint-activations"]  # unknown options go to SAT
    help_text = arguments.build_parser(launcher=True).format_help()
    for action in arguments.build_parser(launcher=True)._actions:
        if action.option_strings and action.dest != "help":
            assert arguments.env_name(action.option_strings[0]) in help_text, action.option_strings


def test_bad_paths_and_configs_are_listed_together(tmp_path):
    bad_ds = tmp_path / "ds.json"
    bad_ds.write_text("{not json")
    opts, _ = arguments.parse(["--train-data", str(tmp_path / "missing.jsonl"), "--deepspeed-config", str(bad_ds),
                               "--freeze", "vision_tower", "--train-iters", "0"], launcher=False)
    with pytest.raises(arguments.ConfigError) as err:
        arguments.check(opts, cuda=False)
    text = str(err.value)
    assert "missing.jsonl: no such file" in text
    assert "invalid JSON" in text
    assert "vision_tower" in text
    assert "--train-iters must be >= 1" in text


def test_lora_target_that_also_trains_fully_is_an_error(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text("")
    opts, _ = arguments.parse(["--train-data", str(data), "--finetune-mode", "lora", "--freeze", "vit",
                               "--lora-targets", "language"], launcher=False)
    with pytest.raises(arguments.ConfigError, match="also train fully"):
        arguments.check(opts, cuda=False)


def test_deepspeed_config_gets_the_run_options():
    opts, _ = arguments.parse(["--batch-size", "5", "--lr", "0.123", "--gradient-accumulation-steps", "3"],
                              launcher=False)
    for name in arguments.NAMED_CONFIGS:
        template = arguments.load_deepspeed_config(arguments.resolve_deepspeed_config(name, cuda=False))
        assert not arguments.deepspeed_config_problems(template, name)
        filled = arguments.fill_deepspeed_config(template, opts)
        assert filled["train_micro_batch_size_per_gpu"] == 5 and filled["gradient_accumulation_steps"] == 3
        assert filled["optimizer"]["params"]["lr"] == 0.123
    assert arguments.resolve_deepspeed_config(None, cuda=True).name == "zero2_bf16.json"
    assert arguments.resolve_deepspeed_config(None, cuda=False).name == "cpu.json"
