"""Through the DeepSpeed launcher on CPU: a --packing run trains on packed rows."""
from tests.test_finetune_run import launch, quick, run_dir, synth, train_log  # noqa: F401 (synth: a fixture)


def test_packing_run_trains_on_packed_rows(synth, tmp_path):
    rc, out = launch(*quick(synth, tmp_path, "--train-iters", 3, "--batch-size", 1, "--packing",
                            "--max-length", 400))
    assert rc == 0, out[-3000:]
    assert "[packing]" in out and "rows of 400 tokens" in out
    losses = [r["loss"] for r in train_log(run_dir(tmp_path))]
    assert len(losses) == 3 and all(x == x for x in losses)
