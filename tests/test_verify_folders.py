"""`gaugeconv verify` on saved folders: real transformers models, real safetensors files, the real
Trainer; every equivalence claim with a negative control beside it, every refusal in one line
with nothing written and the folders untouched."""

import json

import pytest
import torch

from gaugeconv.checkpoint import convert_checkpoint
from gaugeconv.testing import assert_converted_checkpoint
from tests.adversarial.helpers import run, snapshot
from tests.hf.zoo import build

ARCHS = ("gpt2", "llama", "bert", "t5", "vit")  # decoder x2, encoder, encoder-decoder, vision


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Per architecture: a plain folder (STP gauge, float32, width 48: no factor is a power of
    two) and `gaugeconv convert`'s muP folder of it (the default: effective tensors, plain form).

    ViT: transformers 5.25 saves ViT under its legacy key names (``vit.encoder.layer.0.attention
    .attention.query.weight`` for the module's ``vit.layers.0.attention.q_proj.weight``), which
    `gaugeconv convert` does not map yet; its muP folder is the gauged model's own
    save_pretrained (another folder claiming the same function)."""
    import gaugeconv.hf as gh

    root = tmp_path_factory.mktemp("verify")
    for arch in ARCHS:
        model = build(arch)
        model.save_pretrained(root / arch)
        if arch == "vit":
            gh.apply_gauge(model, gh.GaugeConfig(richness=0.5, gauge="mup"))
            model.save_pretrained(root / f"{arch}-mup")
        else:
            convert_checkpoint(root / arch, root / f"{arch}-mup", "mup", richness=0.5,
                               progress=False)
    build("gpt2", torch.float16).save_pretrained(root / "gpt2-f16")
    torch.save(torch.randint(3, 61, (6, 12)), root / "ids.pt")
    (root / "texts.jsonl").write_text('{"text": "no tokenizer beside the model"}\n')
    return root


def verify(capsys, *argv):
    code, out, err = run(capsys, "verify", *argv, "--json")
    assert code in (0, 1), err
    return code, json.loads(out), err


@pytest.mark.parametrize("arch", ARCHS)
def test_stp_to_mup_to_rescaling_float64_float32_and_the_controls(capsys, folders, arch):
    before = snapshot(folders)
    src, mup = folders / arch, folders / f"{arch}-mup"
    # STP -> muP: the folder `convert` wrote, float64, materialized on both sides
    code, rep, _ = verify(capsys, src, mup, "--steps", "4")
    assert code == 0 and rep["equivalent"], rep["failures"]
    assert rep["tolerance"] < 1e-12 and max(rep["max_rel_diff"].values()) <= 1e-12
    assert rep["function"] <= 1e-12 and rep["steps"] == 4
    assert "materialized" in rep["a"] and "mup gauge, materialized" in rep["b"]
    assert rep["per_step"][-1]["loss_a"] != rep["per_step"][0]["loss_a"]  # it does train
    # muP -> rescaling in memory, float32: rounding-level
    code, rep32, _ = verify(capsys, mup, "--to", "rescaling", "--steps", "3", "--dtype",
                            "float32")
    assert code == 0 and rep32["equivalent"] and rep32["dtype"] == "float32", rep32["failures"]
    assert 1e-9 < max(rep32["max_rel_diff"].values()) <= 7.7e-6
    # the negative control: one multiplier left out of side B's forward
    code, bad, _ = verify(capsys, src, mup, "--steps", "2", "--negative-control", "multiplier")
    assert code == 1 and not bad["equivalent"] and bad["function"] > 1e-3
    assert bad["negative_control"]["side"] == "B"
    assert snapshot(folders) == before  # nothing written, nothing changed


def test_eps_control_fails_where_the_honest_run_passes(capsys, folders):
    code, rep, _ = verify(capsys, folders / "llama", "--to", "mup", "-r", "0.5", "--steps", "4")
    assert code == 0 and max(rep["max_rel_diff"].values()) <= 1e-12
    code, bad, _ = verify(capsys, folders / "llama", "--to", "mup", "-r", "0.5", "--steps", "4",
                          "--negative-control", "eps")
    assert code == 1 and bad["function"] <= 1e-12  # the same function: only training differs
    assert bad["max_rel_diff"]["logits"] > 1e-6 and bad["max_rel_diff"]["weights"] > 1e-6


def test_bfloat16_and_the_folders_own_dtype(capsys, folders):
    code, rep, _ = verify(capsys, folders / "llama", folders / "llama-mup", "--steps", "3",
                          "--dtype", "bfloat16")
    assert code == 0 and rep["dtype"] == "bfloat16" and rep["tolerance"] == 2.0 ** -5
    assert 0 < max(rep["max_rel_diff"].values()) <= 2.0 ** -5
    code, rep, _ = verify(capsys, folders / "llama", folders / "llama-mup", "--steps", "2",
                          "--dtype", "as-saved")
    assert code == 0 and rep["dtype"] == "float32"


def test_power_of_two_factors_are_bit_identical(capsys, tmp_path):
    build("gpt2", torch.float32).save_pretrained(tmp_path / "g")  # width 48
    from tests.hf.tiny import build as tiny

    tiny("gpt2", 64).save_pretrained(tmp_path / "g64")
    code, rep, _ = verify(capsys, tmp_path / "g64", "--to", "mup", "-r", "0.5", "--steps", "3")
    assert code == 0 and rep["expected_bit_identical"] and rep["bit_identical"]
    assert max(rep["max_rel_diff"].values()) == 0.0
    code, rep, _ = verify(capsys, tmp_path / "g", "--to", "mup", "-r", "0.5", "--steps", "3")
    assert code == 0 and not rep["expected_bit_identical"] and not rep["bit_identical"]


def test_headless_bert_needs_allow_unusual_roles(capsys, tmp_path):
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    BertModel(BertConfig(hidden_size=48, intermediate_size=96, num_hidden_layers=1,
                         num_attention_heads=4, vocab_size=61, hidden_dropout_prob=0.0,
                         attention_probs_dropout_prob=0.0)).save_pretrained(tmp_path / "b")
    before = snapshot(tmp_path)
    code, out, err = run(capsys, "verify", tmp_path / "b", "--to", "mup", "-r", "0.5")
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert "allow_unusual_roles" in err
    code, rep, _ = verify(capsys, tmp_path / "b", "--to", "mup", "-r", "0.5", "--steps", "3",
                          "--allow-unusual-roles")
    assert code == 0 and rep["equivalent"] and "hidden-state" in rep["context"]["data"]
    assert snapshot(tmp_path) == before


def test_text_output_plot_and_plain_form(capsys, folders, tmp_path):
    plot = tmp_path / "steps.png"
    code, out, _ = run(capsys, "verify", folders / "gpt2", folders / "gpt2-mup", "--steps", "3",
                       "--plot", plot)
    assert code == 0 and "verdict: EQUIVALENT" in out and "rel logits" in out
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the plain form: the same model and groups on both sides, said so
    code, rep, _ = verify(capsys, folders / "gpt2", folders / "gpt2-mup", "--steps", "2",
                          "--form", "plain")
    assert code == 0 and rep["bit_identical"] and any("plain form" in n for n in rep["notes"])


def test_user_data_ids_and_texts(capsys, folders, tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    code, rep, _ = verify(capsys, folders / "gpt2", "--to", "mup", "-r", "0.5", "--data",
                          folders / "ids.pt", "--steps", "3")
    assert code == 0 and rep["equivalent"] and "ids.pt" in rep["context"]["data"]
    # texts with the folder's own tokenizer (built offline), into a copy of the BERT folder
    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    words = "the cat sat on a mat and the dog ran to it while birds sang in the trees"
    tok.train_from_iterator([words] * 3, trainers.WordLevelTrainer(
        special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"], vocab_size=60))
    bert = tmp_path / "bert"
    build("bert").save_pretrained(bert)
    tok.save(str(bert / "tokenizer.json"))
    (bert / "tokenizer_config.json").write_text(json.dumps({"mask_token": "[MASK]"}))
    texts = tmp_path / "texts.jsonl"
    texts.write_text("\n".join(json.dumps({"text": f"the cat sat on the mat {i} times and the "
                                                   "dog ran to it"}) for i in range(8)))
    code, rep, _ = verify(capsys, bert, "--to", "rescaling", "-r", "0.5", "--data", texts,
                          "--steps", "3", "--seq-len", "8")
    assert code == 0 and rep["equivalent"] and "8 texts" in rep["context"]["data"]


@pytest.fixture(scope="module")
def trainer_run(tmp_path_factory):
    """The real GaugeTrainer, plain STP gauge, float64, AdamW with clipping and a linear
    schedule: 12 steps, a checkpoint at 6; and the rows its steps 7-12 trained on."""
    import gaugeconv.hf as gh
    from tests.hf.tiny import Stream, batch, default_dtype, loss_func, training_args
    from tests.hf.tiny import build as tiny

    root = tmp_path_factory.mktemp("trainer")
    with default_dtype(torch.float64):
        model = gh.apply_gauge(tiny("llama", dtype=torch.float64),
                               gh.GaugeConfig(richness=0.5, gauge="stp", optimizer="adam"))
        args = training_args(str(root / "run"), "adamw", 12, save_strategy="steps",
                             save_steps=6)
        trainer = gh.GaugeTrainer(model=model, args=args, train_dataset=Stream("llama"),
                                  compute_loss_func=loss_func("llama"))
        trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    torch.save(batch("llama", 400, 12, seed=7)["input_ids"][24:48].clone(), root / "rows.pt")
    ckpt = root / "run" / "checkpoint-6"
    convert_checkpoint(ckpt, root / "mup", "mup", progress=False, form="materialized")
    convert_checkpoint(root / "mup", root / "resc", "rescaling", progress=False)
    return root, ckpt, losses


@pytest.mark.slow
def test_resumed_checkpoint_continues_the_trainers_own_run(capsys, trainer_run):
    root, ckpt, losses = trainer_run
    before = snapshot(root)
    code, rep, _ = verify(capsys, ckpt, root / "mup", "--data", root / "rows.pt")
    assert code == 0 and rep["equivalent"], rep["failures"]
    assert rep["steps"] == 6 and "resumed from checkpoint-6 (step 6 of 12)" in \
        rep["context"]["start"]
    assert max(rep["max_rel_diff"].values()) <= 1e-12
    # side A resumed as the Trainer resumes: the same losses as the Trainer's own steps 7-12
    resumed = [r["loss_a"] for r in rep["per_step"]]
    assert max(abs(a - b) / b for a, b in zip(resumed, losses[6:], strict=True)) <= 1e-10
    # STP -> muP (materialized) -> rescaling (plain form), each step of the chain
    code, rep, _ = verify(capsys, root / "mup", root / "resc")
    assert code == 0 and max(rep["max_rel_diff"].values()) <= 1e-12
    code, rep, _ = verify(capsys, ckpt, "--to", "rescaling", "--steps", "3", "--dtype",
                          "float32")
    assert code == 0 and rep["equivalent"]
    assert snapshot(root) == before


@pytest.mark.slow
def test_resumed_checkpoint_negative_controls_fail(trainer_run):
    root, ckpt, _ = trainer_run
    eps = assert_converted_checkpoint(ckpt, root / "mup", steps=4, negative_control="eps")
    assert not eps.equivalent and eps.function <= 1e-12 and eps.max_rel_diff["logits"] > 1e-7
    mult = assert_converted_checkpoint(ckpt, root / "mup", steps=2,
                                       negative_control="multiplier")
    assert mult.function > 1e-3
    # and the honest continuation, as an assertion
    ok = assert_converted_checkpoint(ckpt, root / "mup", steps=4)
    assert ok.equivalent and "optimizer.pt" in ok.context["start"]


@pytest.mark.slow
def test_refusals_of_trainer_checkpoints(capsys, trainer_run, folders):
    root, ckpt, _ = trainer_run
    before = snapshot(root)
    for argv, match in [
        ([ckpt, folders / "llama"], "SRC is a Trainer checkpoint (optimizer.pt), DST is not"),
        ([root / "run" / "checkpoint-12", "--to", "mup"], "nothing to resume"),
        ([ckpt, "--to", "mup", "--fresh", "--optimizer", "sgd"], "SGD is sgd-type"),
    ]:
        code, out, err = run(capsys, "verify", *argv)
        assert (code, out) == (2, "") and len(err.strip().splitlines()) == 1, err
        assert match in err, err
    assert snapshot(root) == before


@pytest.mark.parametrize("argv,match", [
    (["{f}/gpt2"], "give DST (a converted folder) or --to GAUGE"),
    (["{f}/gpt2", "{f}/gpt2-mup", "--to", "mup"], "not both"),
    (["{f}/nope", "--to", "mup"], "SRC {f}/nope: no such folder"),
    (["{f}/ids.pt", "--to", "mup"], "is not a folder"),
    (["{f}/gpt2", "--to", "mup"], "carries no gauge entry"),
    (["{f}/gpt2", "--to", "mup", "-r", "0.5", "--width", "64"], "--width applies to the "
     "reference MLP"),
    (["{f}/gpt2", "--to", "ntk", "-r", "0.5"], "unknown gauge 'ntk'"),
    (["{f}/gpt2", "--to", "mfp", "-r", "0.25"], "named point 'mfp' has r=0.5"),
    (["{f}/llama", "--to", "mup", "-r", "0.5", "--optimizer", "sgd", "--negative-control",
      "eps"], "SGD has no eps"),
    (["{f}/gpt2", "{f}/llama-mup"], "not the same model"),
    (["{f}/gpt2", "--to", "mup", "-r", "0.5", "--plot", "{f}/gpt2/p.png"], "is inside SRC"),
    (["{f}/gpt2", "--to", "mup", "-r", "0.5", "--steps", "0"], "--steps must be >= 1"),
    (["{f}/gpt2", "--to", "mup", "-r", "0.5", "--data", "{f}/nope.pt"], "no such file"),
    (["{f}/gpt2", "--to", "mup", "-r", "0.5", "--data", "{f}/gpt2/config.json"],
     "give a .jsonl of texts or a .pt"),
    (["{f}/vit", "--to", "mup", "-r", "0.5", "--data", "{f}/ids.pt"], "needs float "
     "pixel_values"),
    (["{f}/gpt2", "--to", "mup", "-r", "0.5", "--data", "{f}/texts.jsonl"], "texts need the "
     "folder's tokenizer.json"),
    (["{f}/gpt2", "--to", "stp", "-r", "0.5", "--negative-control", "multiplier"],
     "neither side carries a multiplier"),
    (["{f}/gpt2", "--to", "mup", "-r", "0.5", "--negative-control", "lr"], "applies to the "
     "reference MLP"),
    (["--form", "plain"], "--form applies to saved folders"),
    (["{f}/gpt2-f16", "--to", "mup", "-r", "0.5", "--dtype", "as-saved"], "the folder is "
     "float16"),
])
def test_bad_input_one_line_nothing_written(capsys, folders, argv, match):
    before = snapshot(folders)
    argv = [a.format(f=folders) for a in argv]
    code, out, err = run(capsys, "verify", *argv)
    assert (code, out) == (2, ""), err
    assert err.startswith("gaugeconv verify: error: ") and len(err.strip().splitlines()) == 1
    assert match.format(f=folders) in err, err
    assert snapshot(folders) == before


def test_a_model_nothing_can_feed_is_refused_by_name(capsys, tmp_path):
    build("whisper").save_pretrained(tmp_path / "w")
    code, out, err = run(capsys, "verify", tmp_path / "w", "--to", "mup", "-r", "0.5")
    assert (code, out) == (2, "") and "cannot feed WhisperForConditionalGeneration" in err
