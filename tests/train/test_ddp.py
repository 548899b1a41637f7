"""DDP with 2 CPU processes (gloo), started as torchrun would (WORLD_SIZE, RANK, LOCAL_RANK,
MASTER_ADDR, MASTER_PORT): after 2 steps both ranks hold identical weights, they trained on
different shards of the data, and only rank 0 wrote."""
import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from tests.train.test_trainer import make_folder, tiny_overrides

WORLD = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, overrides: list, result_dir: str) -> None:
    os.environ.update(WORLD_SIZE=str(WORLD), RANK=str(rank), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)  # two processes on a two-core machine
    from wscswap_fast.train.config import load_config
    from wscswap_fast.train.distributed import init_distributed, shutdown
    from wscswap_fast.train.trainer import Trainer

    info = init_distributed("cpu")
    try:
        assert info.world_size == WORLD and info.rank == rank and torch.distributed.get_backend() == "gloo"
        trainer = Trainer(load_config(None, overrides), dist_info=info, progress=False)
        seen = []
        step = trainer.train_step

        def recording_step(batch):
            seen.append(batch["target"].double().sum().item())
            return step(batch)

        trainer.train_step = recording_step
        summary = trainer.fit()
        weights = {f"{name}.{k}": v.detach().clone() for name, m in trainer.modules.items()
                   for k, v in m.state_dict().items()}
        weights.update({f"opt_{name}.{i}.{k}": v.clone() for name, opt in trainer.optimizers.items()
                        for i, s in opt.state_dict()["state"].items() for k, v in s.items()})
        torch.save({"weights": weights, "seen": seen, "step": summary["step"], "checkpoint": summary["checkpoint"]},
                   os.path.join(result_dir, f"rank{rank}.pt"))
    finally:
        shutdown(info)


@pytest.mark.slow
def test_two_cpu_processes_hold_identical_weights(tmp_path):
    img_dir, mask_dir = make_folder(str(tmp_path / "data"), n=8)
    out_dir = tmp_path / "run"
    overrides = tiny_overrides(img_dir, mask_dir, str(out_dir), steps=2) + ["run.save_every=2"]
    mp.spawn(_worker, args=(_free_port(), overrides, str(tmp_path)), nprocs=WORLD, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD))
    assert r0["step"] == r1["step"] == 2
    assert r0["weights"].keys() == r1["weights"].keys()
    for key, value in r0["weights"].items():
        assert torch.equal(value, r1["weights"][key]), f"{key} differs between the ranks"
    # each rank trained on its own shard: different batches, the same weights
    assert len(r0["seen"]) == len(r1["seen"]) == 2
    assert all(a != b for a, b in zip(r0["seen"], r1["seen"]))
    # the weights moved from their (common) initial values, so the ranks agreeing is not trivial
    from tests.train.test_trainer import SINGLE
    from wscswap_fast.train.config import load_config
    from wscswap_fast.train.trainer import Trainer

    fresh = Trainer(load_config(None, overrides), dist_info=SINGLE, progress=False).generator.state_dict()
    assert any(not torch.equal(v, r0["weights"][f"generator.{k}"]) for k, v in fresh.items())
    # only rank 0 wrote: one checkpoint, one log line per step
    assert r0["checkpoint"] and r1["checkpoint"] is None
    assert sorted(os.listdir(out_dir / "checkpoints")) == ["step_00000002"]
    log = [json.loads(line) for line in open(out_dir / "log.jsonl")]
    assert [r["step"] for r in log] == [1, 2]
    state = json.load(open(out_dir / "checkpoints" / "step_00000002" / "state.json"))
    assert state["state"]["world_size"] == WORLD
