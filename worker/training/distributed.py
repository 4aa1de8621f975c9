"""One run on several processes: data parallel over torch.distributed (DDP for LoRA, FSDP2's
``fully_shard`` for full fine-tuning).

The loop in ``loop.py`` stays one loop, read top to bottom; on several processes it differs in
four places, all through ``Parallel``:

* each rank takes its share of every global batch (``share``: examples ``rank::world_size``);
  batches, epochs and steps are the global ones, so a step means the same at any world size;
* the loss of a step is summed over every rank's tokens and divided by the *global* number of
  label tokens (``global_sum``), so the gradient is the one a single process computes on the
  whole batch, within float rounding (DDP and FSDP average gradients over ranks: each rank's
  loss is scaled by ``world_size``);
* gradients are reduced once per step (``gradient_sync``: DDP's ``no_sync`` / FSDP2's
  ``set_requires_gradient_sync`` on every row but the last), and under FSDP every rank runs the
  same number of forwards (each is a collective: a rank with fewer rows runs its first again,
  weighted zero);
* stop requests are decided by rank 0, which owns the job (its callbacks, its lease), and
  broadcast (``decide``); files are written by rank 0 only.

A model's state is saved whole (FSDP's sharded weights and optimizer state gathered to rank 0,
keyed by parameter name), so a checkpoint resumes at any world size, 1 included.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")

# How long a collective may wait for a rank before the run fails (a rank that died usually
# fails the next collective at once; this is the backstop for one that hangs).
COLLECTIVE_TIMEOUT = timedelta(minutes=10)


class RowLoss(torch.nn.Module):
    """A method's row loss as a module, so DDP and FSDP2 see every forward through their hooks
    (the loss reads the head's weight itself, which FSDP must have gathered)."""

    def __init__(self, model: torch.nn.Module, row_loss: Callable[..., Any]) -> None:
        super().__init__()
        self.model = model
        self._row_loss = row_loss

    def forward(self, row: Any, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        return self._row_loss(row, device)  # type: ignore[no-any-return]


class Parallel:
    """The run's process group, or none (one process): every method is then a no-op."""

    def __init__(self) -> None:
        initialized = dist.is_available() and dist.is_initialized()
        self.rank = dist.get_rank() if initialized else 0
        self.world_size = dist.get_world_size() if initialized else 1
        self.wrapped: Any = None
        self.kind = "none"  # "none" | "ddp" | "fsdp"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    # -- the model ------------------------------------------------------------------------------

    def wrap(
        self, model: Any, row_loss: Callable[..., Any], training_type: str, device: torch.device
    ) -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
        """The row loss to train with. Call before creating the optimizer: FSDP2 turns the
        parameters into shards (DTensors), which the optimizer must hold."""
        if not self.active:
            return row_loss
        module = RowLoss(model, row_loss)
        if training_type == "full":
            from torch.distributed.fsdp import fully_shard

            for layer in _decoder_layers(model):
                fully_shard(layer)
            fully_shard(module)  # the rest: embeddings, final norm, head
            self.kind = "fsdp"
            self.wrapped = module
        else:
            from torch.nn.parallel import DistributedDataParallel

            ids = [device.index] if device.type == "cuda" and device.index is not None else None
            # No buffers to keep in step (rotary tables are recomputed), and none broadcast in
            # the forward: a forward must not be a collective (ranks run different row counts).
            self.wrapped = DistributedDataParallel(module, device_ids=ids, broadcast_buffers=False)
            self.kind = "ddp"
        return self.wrapped  # type: ignore[no-any-return]

    @contextlib.contextmanager
    def gradient_sync(self, enabled: bool) -> Iterator[None]:
        """Within it, backward passes reduce gradients across ranks only when ``enabled``
        (the step's last row): the rows before accumulate locally."""
        if self.kind == "ddp" and not enabled:
            with self.wrapped.no_sync():
                yield
            return
        if self.kind == "fsdp":
            self.wrapped.set_requires_gradient_sync(enabled)
        yield

    @property
    def loss_scale(self) -> int:
        """DDP and FSDP average gradients over ranks; the loss is a global sum: undo the mean."""
        return self.world_size

    # -- data -----------------------------------------------------------------------------------

    def share(self, items: Sequence[T]) -> list[T]:
        """This rank's part of a global batch."""
        return list(items[self.rank :: self.world_size])

    def forwards(self, n_rows: int) -> int:
        """How many forwards this rank runs for ``n_rows`` rows: under FSDP the most any rank
        has (every forward gathers weights from all ranks), else its own."""
        if self.kind != "fsdp":
            return n_rows
        count = torch.tensor([n_rows], dtype=torch.long, device=_collective_device())
        dist.all_reduce(count, op=dist.ReduceOp.MAX)
        return int(count.item())

    def global_sum(self, values: torch.Tensor) -> torch.Tensor:
        """``values`` summed over ranks (a copy; on one process, ``values`` itself)."""
        if not self.active:
            return values
        total = values.detach().to(_collective_device(), copy=True)
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total.to(values.device)

    def decide(self, value: T) -> T:
        """Rank 0's ``value`` on every rank (a stop request, a choice made from the job)."""
        if not self.active:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    # -- state ----------------------------------------------------------------------------------

    def model_state(self, model: Any) -> dict[str, Any] | None:
        """The whole model's weights on rank 0 (gathered from the shards under FSDP); None: the
        model saves itself (one process, or DDP, whose replicas are identical)."""
        if self.kind != "fsdp":
            return None
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        self._reshard()

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        whole = get_model_state_dict(model, options=options)
        # Tied weights (the head sharing the embeddings) come back as two copies: keep the
        # first name, as save_pretrained does for a model in one piece.
        names = {name for name, _ in model.named_parameters()}
        names |= {name for name, _ in model.named_buffers()}
        return {name: tensor for name, tensor in whole.items() if name in names}

    def optimizer_state(self, model: Any, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """What a checkpoint keeps of the optimizer; under FSDP gathered whole and keyed by
        parameter name, so that any world size can load it."""
        if self.kind != "fsdp":
            return {"format": "torch", "state": optimizer.state_dict()}
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_optimizer_state_dict,
        )

        self._reshard()
        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return {
            "format": "named",
            "state": get_optimizer_state_dict(model, optimizer, options=options),
        }

    def load_optimizer_state(
        self, model: Any, optimizer: torch.optim.Optimizer, saved: dict[str, Any]
    ) -> None:
        if "format" not in saved:  # a checkpoint written before this module: the bare dict
            optimizer.load_state_dict(saved)
            return
        if saved["format"] == "torch":
            optimizer.load_state_dict(saved["state"])
            return
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_optimizer_state_dict,
        )

        options = StateDictOptions(full_state_dict=True)
        set_optimizer_state_dict(model, optimizer, saved["state"], options=options)

    def _reshard(self) -> None:
        """Back to shards: FSDP2 keeps the root's weights gathered after a forward (a backward
        usually follows), and after an evaluation's forwards none does; the state dict and the
        optimizer must see the shards they hold."""
        self.wrapped.reshard()


def _collective_device() -> torch.device:
    """Where a collective's tensors must be: NCCL reduces GPU tensors only, gloo CPU ones."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _decoder_layers(model: Any) -> list[torch.nn.Module]:
    from worker.training.memory import decoder_layers

    layers = decoder_layers(model)
    if not layers:
        raise ValueError("full fine-tuning on several processes needs a decoder-layer stack")
    return list(layers)


# -- starting and ending a process group ----------------------------------------------------------


def init_process_group(
    rank: int, world_size: int, address: str, device: torch.device, run_id: str | None = None
) -> None:
    """Join the run's group: NCCL between GPUs, gloo between CPU processes.

    ``address`` is ``tcp://host:port`` or ``env://``. With ``run_id`` (runs across machines,
    whose agents outlive each run), rank 0 hosts the rendezvous store at ``address`` and
    publishes the id (`RUN_KEY`); every rank keeps its keys under that id, so a rank that comes
    back early from the previous run can never mix into the next one. Between runs the key
    still names the last one, which the agents have served: they wait for a new id."""
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(rank % torch.cuda.device_count())
    if run_id is None:
        dist.init_process_group(
            backend,
            init_method=address,
            rank=rank,
            world_size=world_size,
            timeout=COLLECTIVE_TIMEOUT,
        )
        return
    store = _leader_store(address) if rank == 0 else rendezvous_store(address, leader=False)
    if rank == 0:
        store.set(RUN_KEY, run_id)
    dist.init_process_group(
        backend,
        store=dist.PrefixStore(f"run/{run_id}", store),
        rank=rank,
        world_size=world_size,
        timeout=COLLECTIVE_TIMEOUT,
    )


RUN_KEY = "tuna/run"
# The leading worker serves its rendezvous store once, for all its runs: listening again on the
# same port right after a run fails while the old socket lingers.
_LEADER_STORES: dict[str, Any] = {}


def close_run(address: str) -> None:
    """The leading worker's run has ended: agents must not join it (an agent's rank restarted
    after a crash would otherwise wait in it for a rank 0 that has gone)."""
    if address in _LEADER_STORES:
        _LEADER_STORES[address].set(RUN_KEY, "")


def _leader_store(address: str) -> Any:
    if address not in _LEADER_STORES:
        _LEADER_STORES[address] = rendezvous_store(address, leader=True)
    return _LEADER_STORES[address]


def rendezvous_store(address: str, leader: bool, timeout: timedelta = COLLECTIVE_TIMEOUT) -> Any:
    """The TCPStore at ``tcp://host:port``: served by the leader (rank 0), a client elsewhere."""
    host, port = address.removeprefix("tcp://").rsplit(":", 1)
    return dist.TCPStore(host, int(port), is_master=leader, timeout=timeout, wait_for_workers=False)


def destroy_process_group() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def from_torchrun_environment() -> tuple[int, int, str] | None:
    """(rank, world size, init method) when started by torchrun (its RANK/WORLD_SIZE/MASTER_*
    variables: single- or multi-node rendezvous), else None."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return None
    return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), "env://"
