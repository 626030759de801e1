"""FSDP's pieces that need no process group: which modules become units, and the optimizer
state's two keyings (by parameter name for torch.distributed.checkpoint, by index for
`optimizer.state_dict()` and kdflow's checkpoints). The sharded runs themselves are in
tests/integration (two Ray Train workers over gloo)."""

from __future__ import annotations

import torch
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM
from transformers.models.gpt2.modeling_gpt2 import GPT2Block
from transformers.models.llama.modeling_llama import LlamaDecoderLayer

from kdflow.distill.sharding import by_index, by_name, fsdp_arguments, layer_classes


def test_transformer_blocks_are_the_units_and_small_models_are_one():
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=16, n_head=2, vocab_size=50))
    llama = LlamaForCausalLM(LlamaConfig(num_hidden_layers=2, hidden_size=16,
                                         num_attention_heads=2, num_key_value_heads=2,
                                         intermediate_size=32, vocab_size=50))
    wrapped = nn.ModuleDict({"net": gpt2})  # found below a wrapper, as in StepLoss
    assert layer_classes(wrapped) == {GPT2Block}
    assert layer_classes(llama) == {LlamaDecoderLayer}
    mlp = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    assert layer_classes(mlp) == set()
    arguments = fsdp_arguments(mlp, torch.device("cpu"))
    assert arguments["auto_wrap_policy"] is None and arguments["use_orig_params"]
    assert "sync_module_states" not in arguments  # NCCL only


def test_optimizer_state_by_index_and_by_name_round_trip():
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    model(torch.ones(2, 3)).sum().backward()
    optimizer.step()
    names = [n for n, _ in model.named_parameters()]
    plain = optimizer.state_dict()
    named = by_name(plain, names)
    assert list(named["state"]) == names
    assert named["param_groups"][0]["params"] == names
    back = by_index(named, names)
    assert back["param_groups"] == plain["param_groups"]
    assert back["state"].keys() == plain["state"].keys()
    for i, entry in plain["state"].items():
        assert torch.equal(back["state"][i]["exp_avg"], entry["exp_avg"])
