"""FSDP2 sharding for the trainers (``fsdp: true`` under ``torchrun``, docs/design.md §5 "Scale-out").

:func:`shard_model` shards a :class:`~reward_forcing.models.causal_wan.CausalWanModel` in place
with ``torch.distributed.fsdp.fully_shard``: one FSDP unit per ``WanAttentionBlock``, then the
root (embeddings, time MLP, head). Parameters, gradients and optimizer state are then sharded
over the ranks (``Shard(0)`` DTensors); each unit is all-gathered just before it runs and its
gradients are reduce-scattered (averaged) after its backward, so the trainer must not all-reduce
them again, and ``torch.nn.utils.clip_grad_norm_`` computes the global norm over the DTensor shards.

FSDP2 only hooks ``nn.Module.__call__``; the model is also entered through methods that bypass
it, and those are routed through FSDP's pre/post-forward here:

- ``forward_chunk`` (the streaming rollout) and ``encode_text`` (the trainer encodes a prompt once
  per rollout) on the root, via ``register_fsdp_forward_method``. ``forward`` and ``forward_chunk``
  call ``encode_text`` themselves when given raw text states; inside them the root is already
  unsharded and the plain method runs (a nested FSDP post-forward would free the root's
  parameters in the middle of the outer forward).
- each block's ``cross_attn.encode`` (the text keys/values, computed by the root's ``encode_text``
  outside the block's ``forward``), through a forward method registered on the block: the block is
  all-gathered for it and again in backward, and its gradients are reduce-scattered like the
  block's own.

Checkpoints stay single full state dicts (:func:`full_state_dict`, :func:`full_optimizer_state_dict`:
the same keys and layout as an unsharded model's ``state_dict()`` and optimizer's ``state_dict()``,
so :func:`reward_forcing.models.loading.load_causal_wan` reads them and a run may resume with or
without sharding); :func:`load_full_state_dict` / :func:`load_full_optimizer_state_dict` load a
full state dict into sharded models. Gathering is collective: every rank calls them.

Gloo: FSDP2 reduce-scatters fp32 gradients with ``ReduceOp.AVG``. PyTorch issue #162338 (open;
docs/design.md §5) reports gloo summing instead, which doubles gradients on 2 ranks; torch 2.13 on CPU
averages (tests/train/test_fsdp.py measures it: [1.5] for ranks holding 1 and 2). Not to depend
on the version, :func:`shard_model` makes FSDP2 reduce with SUM and divide by the world size itself
on gloo (``set_force_sum_reduction_for_comms``, the fix proposed for that issue), exact either way;
NCCL keeps its native AVG.
"""

from __future__ import annotations

import functools
from typing import Any
import warnings

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import FSDPModule, fully_shard, register_fsdp_forward_method

_GATHER = StateDictOptions(full_state_dict=True, cpu_offload=True)  # full tensors, on rank 0 only
_SCATTER = StateDictOptions(full_state_dict=True)  # every rank passes the full state dict

# A block's outputs and the text keys/values are views, which FSDP2 warns about because an in-place
# op on one would skip its pre-backward hook; the model never writes to them.
warnings.filterwarnings(
    "ignore",
    category=UserWarning,
    message=r"FSDP2-wrapped module "
    r"\(FSDP(WanAttentionBlock|CausalWanModel)\) returned a view",
)


def is_sharded(model: nn.Module) -> bool:
    """Whether ``model`` was sharded with FSDP2 (``fully_shard``)."""
    return isinstance(model, FSDPModule)


def shard_model(model: Any) -> nn.Module:
    """Shards a ``CausalWanModel`` in place over the default process group (see the module doc)
    and returns it. Build optimizers after this: FSDP2 replaces the parameters with DTensors."""
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("FSDP2 sharding needs an initialised process group (run under torchrun)")
    for block in model.blocks:
        fully_shard(block)
        _route_text_encoding(block)
    # The root too is freed after forward (FSDP2 keeps a root unsharded by default): then the
    # model's parameters are its sharded DTensors between steps, e.g. after the critic step's
    # no-grad rollout, where the EMA update and checkpoints read them; it is ~2 % of Wan's weights.
    fully_shard(model, reshard_after_forward=True)
    _route_root_methods(model)
    if dist.get_backend() == "gloo":  # pytorch#162338: gloo summed on AVG (module doc)
        for module in model.modules():
            if isinstance(module, FSDPModule):
                module.set_force_sum_reduction_for_comms(True)
    return model


def _route_text_encoding(block: Any) -> None:
    """``block.cross_attn.encode`` runs as an FSDP forward method of ``block``."""
    block.encode_text_kv = block.cross_attn.encode  # the bound class method
    register_fsdp_forward_method(block, "encode_text_kv")
    block.cross_attn.encode = block.encode_text_kv  # instance attribute: shadows the class method


def _route_root_methods(model: Any) -> None:
    """``forward_chunk`` and top-level ``encode_text`` calls run FSDP's root pre/post-forward;
    ``encode_text`` called from inside ``forward`` / ``forward_chunk`` runs plain."""
    depth = [0]  # how many forward / forward_chunk calls of this model are running

    def enter(*_):
        depth[0] += 1

    def leave(*_):
        depth[0] -= 1

    model.register_forward_pre_hook(enter)
    model.register_forward_hook(leave, always_call=True)
    register_fsdp_forward_method(model, "forward_chunk")
    register_fsdp_forward_method(model, "encode_text")
    hooked_chunk, hooked_encode = model.forward_chunk, model.encode_text
    plain_encode = functools.partial(type(model).encode_text, model)

    @functools.wraps(hooked_chunk)
    def forward_chunk(*args, **kwargs):
        enter()
        try:
            return hooked_chunk(*args, **kwargs)
        finally:
            leave()

    @functools.wraps(hooked_encode)
    def encode_text(context):
        return (plain_encode if depth[0] else hooked_encode)(context)

    model.forward_chunk, model.encode_text = forward_chunk, encode_text


# ---------------------------------------------------------------------------------------- state
def full_state_dict(model: nn.Module) -> dict:
    """``model.state_dict()`` with full tensors; for a sharded model a collective that returns the
    gathered tensors on CPU on rank 0 and ``{}`` on the other ranks."""
    if not is_sharded(model):
        return model.state_dict()
    return get_model_state_dict(model, options=_GATHER)


def load_full_state_dict(model: nn.Module, state: dict) -> None:
    """Loads a full state dict (every rank passes the same one) into ``model``, sharded or not;
    missing or unexpected keys are an error."""
    if not is_sharded(model):
        model.load_state_dict(state)
        return
    set_model_state_dict(model, state, options=_SCATTER)


def _param_names(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """The names of ``optimizer``'s parameters in its own order (the order of the integer ids of
    ``optimizer.state_dict()``)."""
    names = {id(p): name for name, p in model.named_parameters()}
    try:
        return [names[id(p)] for group in optimizer.param_groups for p in group["params"]]
    except KeyError:
        raise ValueError("the optimizer holds parameters that are not the model's") from None


def full_optimizer_state_dict(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """``optimizer.state_dict()`` (integer parameter ids) with full tensors; for a sharded ``model``
    a collective that returns it on rank 0 (tensors on CPU) and ``{}`` on the other ranks."""
    if not is_sharded(model):
        return optimizer.state_dict()
    by_name: Any = get_optimizer_state_dict(model, optimizer, options=_GATHER)
    if not by_name:
        return {}
    index = {name: i for i, name in enumerate(_param_names(model, optimizer))}
    return {
        "state": {index[name]: s for name, s in by_name["state"].items()},
        "param_groups": [g | {"params": [index[name] for name in g["params"]]} for g in by_name["param_groups"]],
    }


def load_full_optimizer_state_dict(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Loads a full ``optimizer.state_dict()`` (integer ids; every rank passes the same one) into
    the optimizer of ``model``, sharded or not."""
    if not is_sharded(model):
        optimizer.load_state_dict(state)
        return
    names = _param_names(model, optimizer)
    by_name: Any = {
        "state": {names[i]: s for i, s in state["state"].items()},
        "param_groups": [g | {"params": [names[i] for i in g["params"]]} for g in state["param_groups"]],
    }
    set_optimizer_state_dict(model, optimizer, by_name, options=_SCATTER)
