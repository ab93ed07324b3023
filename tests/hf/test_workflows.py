"""Issue 8: multipliers are never silently lost, in the set-ups where 0.1's hooks lost them.

These are tests of the materialized form (stored tensors, multipliers applied on every read);
the default plain form has no multipliers to lose (tests/hf/test_idioms.py).

Each test reproduces one numbered case of the issue (compile, direct weight reads, peft,
interrupts, plain loaders, offload, float16, shared blocks, FSDP2), asserts the function
(outputs, losses, gradients) and keeps a negative control beside it showing that the check
could fail: what the model computes when the multipliers are dropped.
"""

from __future__ import annotations

import json
import os
import warnings

import pytest
import torch

import gaugeconv.hf as gh
from gaugeconv import Custom, GaugeError
from tests.hf.tiny import VOCAB, batch, default_dtype

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MUP = gh.GaugeConfig(richness=0.5, gauge="mup", form="materialized")


def rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def llama(width=32, layers=1, seed=0, dtype=torch.float32):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(hidden_size=width, intermediate_size=2 * width, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, vocab_size=VOCAB,
                      max_position_embeddings=32, bos_token_id=0, eos_token_id=0, pad_token_id=0)
    return LlamaForCausalLM(cfg).to(dtype)


def without_multipliers(model):
    """Negative control: the gauged model's stored tensors in a plain model (m dropped)."""
    plain = llama() if type(model.model).__name__ == "LlamaModel" else None
    stored = {k: p.detach() for k, p in model.named_parameters(remove_duplicate=False)}
    plain.load_state_dict(stored, strict=False)
    return plain


X = batch("llama")


# -- 1. torch.compile ------------------------------------------------------------------------
@pytest.mark.slow
def test_compile_in_both_orders_and_after_a_live_conversion():
    from torch._dynamo.testing import CompileCounter

    torch._dynamo.reset()
    counter = CompileCounter()
    plain = llama()
    ref = plain(**X).loss
    mup = gh.apply_gauge(llama(), MUP)
    assert rel(mup(**X).loss, ref) < 1e-6  # same function, eager
    dropped = without_multipliers(mup)(**X).loss
    assert rel(dropped, ref) > 0.5  # negative control: the loss without multipliers
    # plain first, then muP of the same class (0.1: the muP model reused the plain graph)
    assert torch.equal(torch.compile(plain, backend=counter)(**X).loss, ref)
    assert torch.equal(torch.compile(mup, backend=counter)(**X).loss, mup(**X).loss)
    assert counter.frame_count == 2
    # muP first, then a plain model and an STP-gauge model of the same class
    torch._dynamo.reset()
    counter = CompileCounter()
    assert torch.equal(torch.compile(mup, backend=counter)(**X).loss, mup(**X).loss)
    assert torch.equal(torch.compile(plain, backend=counter)(**X).loss, ref)
    stp = gh.apply_gauge(llama(), MUP.replace(gauge="stp"))
    compiled = torch.compile(stp, backend=counter)
    assert torch.equal(compiled(**X).loss, ref)
    assert counter.frame_count == 2  # STP gauge: the plain model's classes and graph
    # a live conversion of a compiled model: dynamo guards on the class and on m: it recompiles
    gh.convert_gauge(stp, "mup")
    assert rel(compiled(**X).loss, ref) < 1e-6
    assert counter.frame_count == 3
    # no graph break added by gaugeconv
    explained = torch._dynamo.explain(mup)(**X)
    assert explained.graph_break_count == 0 and explained.graph_count == 1


@pytest.mark.slow
def test_compiled_training_step_and_gauge_trainer(tmp_path):
    from tests.hf.tiny import Stream, losses, training_args

    torch._dynamo.reset()
    plain = llama()
    torch.compile(plain, backend="aot_eager")(**X).loss.backward()  # a hook-free graph first
    from torch._dynamo.utils import counters

    runs = {}
    graphs = counters["stats"]["unique_graphs"]
    for compile_ in (False, True):
        model = gh.apply_gauge(llama(), MUP)
        args = training_args(str(tmp_path / str(compile_)), "adamw", 4, torch_compile=compile_,
                             torch_compile_backend="aot_eager", max_grad_norm=0)
        trainer = gh.GaugeTrainer(model=model, args=args, train_dataset=Stream("llama"))
        trainer.train()
        runs[compile_] = torch.tensor(losses(trainer))
    assert counters["stats"]["unique_graphs"] > graphs  # the Trainer did compile
    assert rel(runs[True], runs[False]) < 1e-5
    assert (runs[False][0] - runs[False][-1]).abs() > 1e-3  # it trained


# -- 2. weights read outside their module's call ---------------------------------------------
def direct_read_model(name):
    import transformers as T

    torch.manual_seed(0)
    if name == "mamba":
        cfg = T.MambaConfig(vocab_size=VOCAB, hidden_size=32, state_size=4, num_hidden_layers=1,
                            expand=2, conv_kernel=3, use_mambapy=False)  # "auto" rank
        return T.MambaForCausalLM(cfg)
    if name == "mamba2":
        cfg = T.Mamba2Config(vocab_size=VOCAB, hidden_size=32, state_size=4, num_hidden_layers=1,
                             expand=2, conv_kernel=3, n_groups=1, num_heads=8, head_dim=8,
                             chunk_size=4)
        return T.Mamba2ForCausalLM(cfg)
    if name == "mobilebert":
        cfg = T.MobileBertConfig(vocab_size=VOCAB, hidden_size=32, embedding_size=16,
                                 intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                                 intra_bottleneck_size=16, true_hidden_size=16,
                                 num_feedforward_networks=1, max_position_embeddings=32,
                                 hidden_dropout_prob=0, attention_probs_dropout_prob=0)
        return T.MobileBertForMaskedLM(cfg)
    cfg = T.DebertaV2Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
                            num_hidden_layers=1, num_attention_heads=4, max_position_embeddings=32,
                            relative_attention=True, position_buckets=8, pos_att_type=["p2c", "c2p"],
                            hidden_dropout_prob=0, attention_probs_dropout_prob=0)
    model = T.DebertaV2ForMaskedLM(cfg)
    with torch.no_grad():  # relative positions that matter at init
        model.deberta.encoder.rel_embeddings.weight.normal_()
    return model


# the tensor each architecture reads outside its module's call (0.1 lost its multiplier)
DIRECT = {
    "mamba": "backbone.layers.0.mixer.dt_proj.weight",
    "mamba2": "backbone.layers.0.mixer.conv1d.weight",
    "mobilebert": "cls.predictions.transform.dense.weight",  # concatenated with decoder.weight.t()
    "deberta": "deberta.encoder.rel_embeddings.weight",
}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n.startswith("mamba")
                                  else n for n in sorted(DIRECT)])  # mamba: seconds each
def test_direct_reads_see_the_multiplier(name):
    ids = X["input_ids"][:2]
    with default_dtype(torch.float64):
        ref = direct_read_model(name).eval()(input_ids=ids).logits
        cfg = MUP.replace(role_overrides={"*A_log": "readin"})  # Mamba's A_log: [channels, state]
        model = gh.apply_gauge(direct_read_model(name).eval(), cfg)
    out = model(input_ids=ids).logits
    assert rel(out, ref) < 1e-13  # muP = STP (the plain model) to rounding
    module_path, _, attr = DIRECT[name].rpartition(".")

    def control() -> bool:
        """Negative control: the directly read tensor without its multiplier (0.1's failure);
        possible where its multiplier is not 1 (then the module carries it)."""
        module = model.get_submodule(module_path)
        if attr not in getattr(module, "_gaugeconv_m", {}):
            return False
        module._gaugeconv_m[attr] /= 2
        assert rel(model(input_ids=ids).logits, out) > 1e-9
        module._gaugeconv_m[attr] *= 2
        assert torch.equal(model(input_ids=ids).logits, out)
        return True

    controlled = control()
    # the probe: double every multiplier and halve every stored tensor -> bit for bit the same
    m = gh.get_gauged(model).multipliers
    assert sum(v != 1.0 for v in m.values()) >= 4
    gh.convert_gauge(model, Custom({k: 2 * v for k, v in m.items()}))
    assert torch.equal(model(input_ids=ids).logits, out)
    assert control() or controlled


# -- 4. interrupts -----------------------------------------------------------------------------
@pytest.mark.parametrize("error", [KeyboardInterrupt, SystemExit])
def test_interrupt_inside_a_gauged_module_leaves_the_model_intact(tmp_path, error):
    model = gh.apply_gauge(llama(), MUP)
    ref = model(**X).loss
    before = {k: v.clone() for k, v in model.state_dict().items()}

    def stop(module, args, output):
        raise error()

    handle = model.model.layers[0].self_attn.q_proj.register_forward_hook(stop)
    with pytest.raises(error):
        model(**X)
    handle.remove()
    assert torch.equal(model(**X).loss, ref)
    model(**X).loss.backward()  # 0.1: "backward through the graph a second time"
    assert all(p.grad is not None for p in model.parameters())
    after = model.state_dict()
    assert all(torch.equal(after[k], before[k]) for k in before)
    model.save_pretrained(tmp_path / "m")
    loaded = gh.from_pretrained(type(model), tmp_path / "m")
    assert torch.equal(loaded(**X).loss, ref)
    # negative control: the same model with its multipliers dropped
    assert rel(without_multipliers(model)(**X).loss, ref) > 0.5


# -- 8. a block registered twice; state_dict() inside a call ---------------------------------
def test_shared_block_and_state_dict_inside_a_call():
    plain = llama(layers=2)
    plain.model.layers[1] = plain.model.layers[0]
    ref = plain(**X).loss
    model = llama(layers=2)
    model.model.layers[1] = model.model.layers[0]
    gh.apply_gauge(model, MUP)
    assert rel(model(**X).loss, ref) < 1e-6
    uses = gh.get_gauged(model).uses
    assert uses["model.layers.1.mlp.up_proj.weight"] == "model.layers.0.mlp.up_proj.weight"
    q = model.model.layers[0].self_attn.q_proj
    seen = {}

    def grab(module, args):
        seen["sd"] = model.state_dict()  # inside the gauged module's call

    handle = q.register_forward_pre_hook(grab)
    model(**X)
    handle.remove()
    outside = model.state_dict()
    assert all(torch.equal(seen["sd"][k], outside[k]) for k in outside)
    # the state dict holds effective tensors: the plain model's, not the stored ones
    key = "model.layers.0.self_attn.q_proj.weight"
    assert torch.allclose(outside[key], plain.state_dict()[key], rtol=1e-6, atol=0)
    assert not torch.allclose(dict(model.named_parameters())[key], outside[key])  # control


# -- 5. consumers that do not know gaugeconv -------------------------------------------------
def test_plain_loaders_get_the_same_function(tmp_path):
    from transformers import AutoModelForCausalLM

    model = gh.apply_gauge(llama(), MUP)
    ref = model(**X).loss
    model.save_pretrained(tmp_path / "mup")
    entry = json.loads((tmp_path / "mup" / "config.json").read_text())["gaugeconv"]
    assert entry["gauge"] == "mup" and entry["format_version"] == 2
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "mup")
    assert torch.equal(plain(**X).loss, ref)  # plain transformers: the same function
    again = gh.from_pretrained(AutoModelForCausalLM, tmp_path / "mup")
    assert torch.equal(again(**X).loss, ref)  # back in the gauge, bit for bit
    assert gh.get_gauged(again).multipliers == gh.get_gauged(model).multipliers
    # in memory, both ways
    fresh = llama(seed=3)
    fresh.load_state_dict(model.state_dict())
    assert torch.equal(fresh(**X).loss, ref)
    other = gh.apply_gauge(llama(seed=5), MUP)
    other.load_state_dict(plain.state_dict())
    assert torch.equal(other(**X).loss, ref)
    # negative control: the stored tensors, taken as a plain state dict, are another function
    assert rel(without_multipliers(model)(**X).loss, ref) > 0.5
    # `gaugeconv convert` on such a folder: only the gauge entry moves, the function stays
    from gaugeconv.checkpoint import convert_checkpoint

    report = convert_checkpoint(tmp_path / "mup", tmp_path / "resc", "rescaling", progress=False)
    assert report.scaled == 0 and report.lossless
    for load in (AutoModelForCausalLM.from_pretrained, lambda p: gh.from_pretrained(
            AutoModelForCausalLM, p)):
        assert torch.equal(load(tmp_path / "resc")(**X).loss, ref)
    resc = gh.from_pretrained(AutoModelForCausalLM, tmp_path / "resc")
    assert gh.gauge_config_of(resc).gauge == "rescaling"


# -- 6. accelerate offload ---------------------------------------------------------------------
def test_accelerate_offload_is_refused_clearly_and_stp_offloads(tmp_path):
    from accelerate import cpu_offload

    model = gh.apply_gauge(llama(), MUP)
    ref = model(**X).loss
    other = gh.apply_gauge(llama(), MUP)
    with pytest.raises(GaugeError, match="accelerate offload"):
        cpu_offload(other, execution_device="cpu")
    assert torch.equal(other(**X).loss, ref)  # refused at the first gauged module; same function
    # from_pretrained with disk offload: gaugeconv refuses before changing anything; plain
    # transformers loads the saved folder (effective tensors) with the same outputs
    from transformers import AutoModelForCausalLM

    model.save_pretrained(tmp_path / "mup")
    device_map = {"model.embed_tokens": "cpu", "model.layers": "disk", "model.norm": "cpu",
                  "model.rotary_emb": "cpu", "lm_head": "cpu"}
    kw = {"device_map": device_map, "offload_folder": str(tmp_path / "off")}
    with pytest.raises(GaugeError, match="accelerate"):
        gh.from_pretrained(AutoModelForCausalLM, tmp_path / "mup", **kw)
    offloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "mup", **kw)
    assert "_hf_hook" in offloaded.model.layers[0].__dict__  # really offloaded to disk
    assert torch.equal(offloaded(**X).loss, ref)
    # for inference the gauge does not matter: STP gauge offloads with the same outputs
    gh.convert_gauge(model, "stp")
    cpu_offload(model, execution_device="cpu")
    assert rel(model(**X).loss, ref) < 1e-6
    assert next(model.parameters()).device.type == "meta"  # really offloaded


# -- 7. pure float16 -----------------------------------------------------------------------------
def test_float16_in_a_gauge_whose_gradients_underflow_warns():
    counts = {}
    for gauge in ("stp", "mup"):
        model = gh.apply_gauge(llama(width=64), MUP.replace(gauge=gauge)).half()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            gh.GaugeOptimizerFactory()(model, "adamw", lr=1e-3)
            gh.GaugeOptimizerFactory()(model, "adamw", lr=1e-3)  # warns once per model
        msgs = [str(w.message) for w in caught if "float16" in str(w.message)]
        if gauge == "mup":
            assert len(msgs) == 1 and "plain form" in msgs[0] and "underflow" in msgs[0], msgs
        else:
            assert msgs == []  # negative control
        model(**X).loss.float().backward()
        # the function: stored gradients are m * effective; count entries that flushed to zero
        counts[gauge] = sum(int((p.grad == 0).sum()) for p in model.parameters())
    assert counts["mup"] > counts["stp"]


# -- 3. peft (LoRA) ------------------------------------------------------------------------------
def lora_model(gauge, first="peft", seed=0):
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(r=4, target_modules=["q_proj", "v_proj", "down_proj"], lora_alpha=8)
    with default_dtype(torch.float64):
        base = llama(seed=seed, dtype=torch.float64)
        if first == "gauge":
            return get_peft_model(gh.apply_gauge(base, MUP.replace(gauge=gauge)), cfg)
        return gh.apply_gauge(get_peft_model(base, cfg), MUP.replace(gauge=gauge))


def train_lora(tmp_path, model, tag, steps=4):
    from tests.hf.tiny import Stream, loss_func, losses, training_args

    with default_dtype(torch.float64):
        args = training_args(str(tmp_path / tag), "adamw", steps, learning_rate=0.02)
        trainer = gh.GaugeTrainer(model=model, args=args, train_dataset=Stream("llama"),
                                  compute_loss_func=loss_func("llama"))
        trainer.train()
    return torch.tensor(losses(trainer), dtype=torch.float64), trainer


@pytest.mark.slow
def test_lora_roles_training_merge_save_and_load(tmp_path):
    from peft import PeftModel

    rows = {r["name"]: r for r in gh.describe_roles(lora_model("mup"))}
    a = rows["model.layers.0.self_attn.q_proj.lora_A.default.weight"]
    b = rows["model.layers.0.self_attn.q_proj.lora_B.default.weight"]
    assert (a["role"], a["fan_in"]) == ("readout", 32) and (b["role"], b["fan_in"]) == ("readin", 4)
    base = rows["model.layers.0.self_attn.q_proj.base_layer.weight"]
    assert base["role"] == "fixed" and base["multiplier"] == 1.0  # frozen: merges stay exact
    assert a["multiplier"] == 1 / 32 and b["multiplier"] == 1 / 4

    ref, _ = train_lora(tmp_path, lora_model("stp"), "stp")
    mup_model = lora_model("mup")
    got, trainer = train_lora(tmp_path, mup_model, "mup")
    assert (ref[0] - ref[-1]).abs() > 1e-3 and rel(got, ref) <= 1e-12  # STP = muP, float64
    names = [n for g in trainer.optimizer.param_groups[1:] for n in g["param_names"]]
    assert names and all("lora_" in n for n in names)  # only adapters train
    # gauge first, then LoRA: re-gauged on entry to the Trainer, same trajectory
    late, _ = train_lora(tmp_path, lora_model("mup", first="gauge"), "late")
    assert rel(late, ref) <= 1e-12

    x = {k: v for k, v in X.items() if k != "labels"}
    unmerged = mup_model(**x).logits
    with mup_model.disable_adapter():
        assert rel(mup_model(**x).logits, unmerged) > 1e-4  # negative control: LoRA matters
    mup_model.save_pretrained(tmp_path / "adapter")
    # plain peft on a plain base of the same function loads the (effective) adapters
    with default_dtype(torch.float64):
        plain_base = llama(dtype=torch.float64)  # the frozen base, as built
    plain_peft = PeftModel.from_pretrained(plain_base, tmp_path / "adapter")
    assert rel(plain_peft(**x).logits, unmerged) < 1e-13
    # merging: gaugeconv's and peft's own give the unmerged function
    merged = gh.merge_and_unload(mup_model)
    assert rel(merged(**x).logits, unmerged) < 1e-13
    assert gh.gauge_config_of(merged).role_overrides == {}
    assert gh.get_gauged(merged).multipliers["model.layers.0.self_attn.q_proj.weight"] == 1 / 32
    plain_merged = plain_peft.merge_and_unload()
    assert rel(plain_merged(**x).logits, unmerged) < 1e-13


# -- FSDP2 ---------------------------------------------------------------------------------------
@pytest.mark.slow
def test_fsdp2_two_processes_train_like_one_in_both_gauges(tmp_path):
    from tests.hf.fsdp_script import train
    from tests.hf.torchrun import run_ranks, torchrun_command

    script = os.path.join(ROOT, "tests", "hf", "fsdp_script.py")
    run_ranks(torchrun_command(script, 4, tmp_path / "two.json"))
    two = json.loads((tmp_path / "two.json").read_text())
    one = {g: train(g, 4) for g in ("stp", "mup")}
    assert two["world_size"] == 2 and two["mup"]["param_type"] == "DTensor"  # really sharded
    ref = torch.tensor(one["stp"]["losses"], dtype=torch.float64)
    assert (ref[0] - ref[-1]).abs() > 0.1  # it trained
    for gauge in ("stp", "mup"):
        for run in (one[gauge], two[gauge]):
            assert rel(torch.tensor(run["losses"], dtype=torch.float64), ref) <= 1e-12, gauge
        assert two[gauge]["groups"] == one[gauge]["groups"]  # per-tensor groups survive sharding
        assert abs(two[gauge]["state_sum"] - one["stp"]["state_sum"]) <= 1e-9
    names = [n for group in one["mup"]["groups"][1:] for n in group]
    assert len(names) == len(set(names)) > 20  # every tensor named once, in merged groups


# -- optimizer groups: shared where hyperparameters agree, split by a conversion that needs it ----
def test_merged_groups_keep_names_and_live_conversion_stays_exact():
    from transformers import get_linear_schedule_with_warmup

    with default_dtype(torch.float64):
        models = [gh.apply_gauge(llama(dtype=torch.float64), MUP) for _ in range(2)]
    g = gh.get_gauged(models[0])
    per_tensor = gh.GaugeOptimizerFactory()(models[0], "adamw", lr=0.02, merge=False)
    opts = [gh.GaugeOptimizerFactory()(m, "adamw", lr=0.02, weight_decay=0.01) for m in models]
    groups = opts[0].param_groups
    assert len(groups) < len(per_tensor.param_groups) - 5  # fewer groups
    assert sorted(n for grp in groups[1:] for n in grp["param_names"]) == sorted(g.plans)
    for grp in groups[1:]:  # param_names name the group's tensors, in order
        params = dict(models[0].named_parameters())
        assert all(params[n] is p for n, p in zip(grp["param_names"], grp["params"], strict=True))
    scheds = [get_linear_schedule_with_warmup(o, 2, 8) for o in opts]
    # a custom gauge that gives tensors of one group different multipliers: the group splits
    m = g.multipliers
    odd = Custom({k: v * (2.0 if "layers.0.mlp" in k else 0.75) for k, v in m.items()})
    data = {k: v for k, v in X.items()}
    for step in range(5):
        if step == 2:
            before = len(opts[0].param_groups)
            gh.convert_gauge(models[0], odd, optimizer=opts[0], schedulers=[scheds[0]])
            assert len(opts[0].param_groups) > before
        for model, opt, sched in zip(models, opts, scheds):
            opt.zero_grad()
            model(**data).loss.backward()
            opt.step()
            sched.step()
    a = {k: v for k, v in gh.get_gauged(models[0]).effective_parameters().items()}
    b = gh.get_gauged(models[1]).effective_parameters()
    assert max(((a[k] - b[k]).abs().max() / b[k].abs().max()).item() for k in a) <= 1e-12
    # negative control: the same conversion without the optimizer leaves the run off course
    with default_dtype(torch.float64):
        model = gh.apply_gauge(llama(dtype=torch.float64), MUP)
    opt = gh.GaugeOptimizerFactory()(model, "adamw", lr=0.02, weight_decay=0.01)
    sched = get_linear_schedule_with_warmup(opt, 2, 8)
    for step in range(5):
        if step == 2:
            gh.convert_gauge(model, odd)
        opt.zero_grad()
        model(**data).loss.backward()
        opt.step()
        sched.step()
    c = gh.get_gauged(model).effective_parameters()
    assert max(((c[k] - b[k]).abs().max() / b[k].abs().max()).item() for k in c) > 1e-4
