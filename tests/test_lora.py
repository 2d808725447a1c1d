"""LoRA on a pretrained base (``model.lora``, ``unitok.lm.lora``): what trains, what stays frozen,
the two exports (adapters merged, or peft's adapter files beside the new rows), and the pipeline
drawing and captioning with the result.

The bases are tiny random "hub" folders (``test_lm.save_tiny_hub_model``): a Llama with an untied
output head and a Qwen2 whose head is tied to its embedding. The image tokenizer is the pipeline
tests' tiny FSQ one (48 codes on a 4x4 grid).
"""

import logging
import textwrap
from types import SimpleNamespace

import lightning as L
import pytest
import torch
import yaml
from test_lm import save_tiny_hub_model, write_code_shards
from transformers import AutoModelForCausalLM

from generation.pipeline import UniTokPipeline
from generation.sampler import generate_captions, sample_image_codes
from unitok.cli import main as unitok_main
from unitok.errors import UserError
from unitok.lm.data import CodeShardDataModule
from unitok.lm.export import export_lm
from unitok.lm.image_positions import lm_forward
from unitok.lm.lora import NEW_ROWS_ATTRIBUTE, NEW_ROWS_FILE
from unitok.lm.model import load_unified_lm
from unitok.lm.module import UnifiedLMModule
from unitok.lm.sequences import IGNORE, captioning_example, collate, next_token_losses, text_to_image_example
from unitok.lm.text_tokenizer import encode_text
from unitok.vocabulary import VOCABULARY_FILE

CODEBOOK, GRID = 48, (4, 4)  # TINY_IMAGE_TOKENIZER's
LORA = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": "all-linear"}


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    folder = tmp_path_factory.mktemp("codes")
    return folder, write_code_shards(folder, 8, grid=GRID, codebook=CODEBOOK)


def fixed_batch(module: UnifiedLMModule, pairs) -> dict[str, torch.Tensor]:
    """Drawing and captioning sequences of training samples: the loss the run should lower."""
    vocab, tokenizer = module.vocabulary, module.text_tokenizer
    examples = []
    for caption, codes in pairs[:4]:
        text, codes = encode_text(tokenizer, caption), torch.from_numpy(codes).long()
        examples += [text_to_image_example(text, codes, vocab), captioning_example(codes, text, vocab)]
    return collate(examples, vocab)


def loss_on(module: UnifiedLMModule, batch) -> float:
    """Mean next-token loss on the batch's targets."""
    with torch.no_grad():
        logits = lm_forward(module.model, module.vocabulary, batch["input_ids"],
                            attention_mask=batch["attention_mask"]).logits
    token_loss, targets = next_token_losses(logits, batch["labels"])
    return token_loss[targets != IGNORE].mean().item()


@pytest.fixture(scope="module", params=["llama", "qwen2"])  # untied and tied output heads
def trained(request, tmp_path_factory, image_tokenizer, shards):
    """A LoRA run of 8 steps on a tiny base, with its state before and after and a checkpoint."""
    L.seed_everything(0)  # the adapters' initialisation and the batches: the same run whatever ran before
    tmp = tmp_path_factory.mktemp(request.param)
    save_tiny_hub_model(request.param, tmp / "hub")
    module = UnifiedLMModule(pretrained=str(tmp / "hub"), image_tokenizer=str(image_tokenizer), lora=LORA,
                             learning_rate=1e-2, warmup_steps=1)
    batch = fixed_batch(module, shards[1])
    before = {name: value.clone() for name, value in module.model.state_dict().items()}
    loss_before = loss_on(module, batch)
    trainer = L.Trainer(max_steps=8, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    data = CodeShardDataModule(train_shards=str(shards[0]), batch_size=4, samples_per_epoch=8, num_workers=0,
                               shuffle_buffer=1)
    trainer.fit(module, data)
    trainer.save_checkpoint(tmp / "lora.ckpt")
    return SimpleNamespace(module=module, hub=tmp / "hub", checkpoint=tmp / "lora.ckpt", tmp=tmp, batch=batch,
                           before=before, loss_before=loss_before, loss_after=loss_on(module, batch))


def test_lora_trains_the_adapters_and_the_new_rows_only(trained):
    # Down on the batch it trains on (0.086 to over 0.1 across full-suite runs; without training exactly 0).
    assert trained.loss_after < trained.loss_before - 0.03
    model = trained.module.model
    after = model.state_dict()
    changed = {name for name in after if not torch.equal(after[name], trained.before[name])}
    trainable = {name for name, parameter in model.named_parameters() if parameter.requires_grad}
    assert changed == trainable
    assert all("lora_" in name or name.startswith(f"{NEW_ROWS_ATTRIBUTE}.") for name in trainable)
    assert any("lora_A" in name for name in trainable) and any("lora_B" in name for name in trainable)
    tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
    assert tied == (trained.module.model.config.model_type == "qwen2")
    expected_rows = {f"{NEW_ROWS_ATTRIBUTE}.input"} | (set() if tied else {f"{NEW_ROWS_ATTRIBUTE}.output"})
    assert {name for name in trainable if name.startswith(NEW_ROWS_ATTRIBUTE)} == expected_rows


def test_every_weight_of_the_base_is_bit_for_bit_unchanged(trained):
    base = AutoModelForCausalLM.from_pretrained(trained.hub)
    text_size = trained.module.vocabulary.text_size
    # peft keeps a wrapped layer's own weight as `<layer>.base_layer.weight`.
    now = {name.replace(".base_layer.", "."): value for name, value in trained.module.model.state_dict().items()}
    for name, original in base.named_parameters():
        if name in ("model.embed_tokens.weight", "lm_head.weight"):  # the rows the base had
            original, current = original[:text_size], now[name][:text_size]
        else:
            current = now[name]
        assert torch.equal(current, original), name


def test_export_merges_the_adapters_into_a_plain_model(trained):
    out = export_lm(trained.checkpoint, trained.tmp / "merged")
    assert {"config.json", "model.safetensors", "tokenizer.json", VOCABULARY_FILE} <= {p.name for p in out.iterdir()}
    assert not (out / "adapter_config.json").exists()
    model, _, vocab = load_unified_lm(out)  # plain AutoModelForCausalLM: no peft layers, no hooks
    assert not any("lora" in name or NEW_ROWS_ATTRIBUTE in name for name, _ in model.named_parameters())
    assert vocab == trained.module.vocabulary
    trained.module.model.eval()
    with torch.no_grad():
        expected = trained.module.model(input_ids=trained.batch["input_ids"]).logits
        merged = model(input_ids=trained.batch["input_ids"]).logits
    torch.testing.assert_close(merged, expected, atol=1e-5, rtol=1e-5)


def test_export_as_a_peft_adapter_loads_onto_its_base(trained):
    merged = export_lm(trained.checkpoint, trained.tmp / "merged-for-adapter")
    out = export_lm(trained.checkpoint, trained.tmp / "adapter", adapter=True)
    files = {p.name for p in out.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", NEW_ROWS_FILE, "tokenizer.json", VOCABULARY_FILE} <= files
    assert "model.safetensors" not in files
    assert (out / "adapter_model.safetensors").stat().st_size < (merged / "model.safetensors").stat().st_size / 2
    from_adapter, _, vocab = load_unified_lm(out)  # the base (named in adapter_config.json) + rows + adapters
    from_merged, _, _ = load_unified_lm(merged)
    assert vocab == trained.module.vocabulary
    reference = from_merged.state_dict()
    for name, value in from_adapter.state_dict().items():
        torch.testing.assert_close(value, reference[name], atol=1e-6, rtol=1e-6, msg=name)


@pytest.mark.parametrize("form", ["merged", "adapter"])
def test_the_pipeline_draws_and_captions_with_a_lora_model(trained, image_tokenizer, form, tmp_path):
    lm = export_lm(trained.checkpoint, tmp_path / "lm", adapter=form == "adapter")
    UniTokPipeline.from_parts(lm, image_tokenizer).save_pretrained(tmp_path / "pipeline")
    pipe = UniTokPipeline.from_pretrained(tmp_path / "pipeline")  # a plain LM folder inside, adapters merged
    pipe.set_progress_bar_config(disable=True)
    generators = [torch.Generator().manual_seed(i) for i in range(2)]
    images = pipe(["a red circle", "a small blue square at the top"], generator=generators).images
    assert len(images) == 2 and all(image.size == (16, 16) for image in images)
    codes = pipe("a red circle", generator=torch.Generator().manual_seed(0), output_type="latent").images
    assert codes.shape == (1, *GRID) and 0 <= int(codes.min()) and int(codes.max()) < CODEBOOK
    captions = pipe.caption(images, max_new_tokens=8)
    assert len(captions) == 2 and all(isinstance(caption, str) for caption in captions)


def test_the_model_in_training_samples_as_its_merged_export(trained, tmp_path):
    """Validation previews sample the live model, adapters and new rows attached through peft
    layers and hooks: the decoders must see them (and not read the frozen base weights alone)."""
    merged, _, vocab = load_unified_lm(export_lm(trained.checkpoint, tmp_path / "merged"))
    live = trained.module.model.eval()
    prompts = [encode_text(trained.module.text_tokenizer, text) for text in ("a red circle", "a small blue square")]
    drawn = [sample_image_codes(model, vocab, prompts, generator=[torch.Generator().manual_seed(i) for i in range(2)])
             for model in (live, merged)]
    assert torch.equal(*drawn)
    captions = [generate_captions(model, vocab, drawn[0], max_new_tokens=8) for model in (live, merged)]
    assert captions[0] == captions[1]


def test_a_lora_run_from_yaml_logs_its_trainable_share_and_exports_both_ways(tmp_path, image_tokenizer, shards, caplog):
    save_tiny_hub_model("qwen2", tmp_path / "hub")
    config = tmp_path / "lora.yaml"
    config.write_text(textwrap.dedent(f"""\
        seed_everything: 0
        trainer:
          accelerator: cpu
          max_steps: 2
          logger: false
          enable_progress_bar: false
          enable_model_summary: false
          default_root_dir: {tmp_path / "run"}
          callbacks:
            - class_path: lightning.pytorch.callbacks.ModelCheckpoint
              init_args: {{dirpath: {tmp_path / "ckpt"}, save_last: true, save_top_k: 0}}
        model:
          pretrained: {tmp_path / "hub"}
          image_tokenizer: {image_tokenizer}
          warmup_steps: 1
          lora: {{r: 2, alpha: 4, target_modules: [q_proj, v_proj]}}
        data:
          train_shards: {shards[0]}
          batch_size: 4
          samples_per_epoch: 8
          num_workers: 0
        """))
    with caplog.at_level(logging.INFO):
        assert unitok_main(["lm", "fit", "--config", str(config)]) == 0
    line = next(record.getMessage() for record in caplog.records if record.getMessage().startswith("LoRA:"))
    # 2 layers x (q_proj, v_proj) x rank 2 x (in + out); the new rows are tied (Qwen2), one copy
    assert "adapters 448," in line and "trainable parameters of" in line and "%" in line
    checkpoint = tmp_path / "ckpt" / "last.ckpt"
    # A resumed LoRA run rebuilds the same frozen base, adapters and rows, and goes on from its step.
    assert unitok_main(["lm", "fit", "--config", str(config), "--trainer.max_steps", "3",
                        "--ckpt_path", str(checkpoint)]) == 0
    assert torch.load(checkpoint, weights_only=True)["global_step"] == 3
    assert unitok_main(["lm", "export", str(checkpoint), str(tmp_path / "merged")]) == 0
    assert unitok_main(["lm", "export", str(checkpoint), str(tmp_path / "adapter"), "--adapter"]) == 0
    assert (tmp_path / "merged" / "model.safetensors").is_file()
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()


def test_the_shipped_lora_config_composes_with_the_qwen_recipe(capsys):
    with pytest.raises(SystemExit) as exit_info:
        unitok_main(["lm", "fit", "--config", "configs/lm/qwen2.5-0.5b.yaml",
                     "--config", "configs/lm/qwen2.5-0.5b-lora.yaml", "--print_config"])
    assert exit_info.value.code == 0
    composed = yaml.safe_load(capsys.readouterr().out)
    assert composed["model"]["pretrained"] == "Qwen/Qwen2.5-0.5B" and composed["model"]["lora"]["r"] == 16
    assert composed["data"]["train_shards"] == "data/shapes-codes/train"  # from the recipe
    assert composed["trainer"]["default_root_dir"] == "runs/qwen2.5-0.5b-lora"  # not the full run's


def test_lora_needs_a_pretrained_base_and_layers_to_adapt(tmp_path, image_tokenizer):
    with pytest.raises(UserError, match="set model.pretrained"):
        UnifiedLMModule(image_tokenizer=str(image_tokenizer), lora=LORA)
    save_tiny_hub_model("llama", tmp_path / "hub")
    with pytest.raises(UserError, match=r"match no layer of this LM .*'q_proj'"):
        UnifiedLMModule(pretrained=str(tmp_path / "hub"), image_tokenizer=str(image_tokenizer),
                        lora={"target_modules": ["query", "value"]})
    with pytest.raises(UserError, match="embedding or the output head"):
        UnifiedLMModule(pretrained=str(tmp_path / "hub"), image_tokenizer=str(image_tokenizer),
                        lora={"target_modules": ["q_proj", "lm_head"]})


def test_only_a_lora_checkpoint_exports_an_adapter(tmp_path, image_tokenizer, shards):
    save_tiny_hub_model("llama", tmp_path / "hub")
    module = UnifiedLMModule(pretrained=str(tmp_path / "hub"), image_tokenizer=str(image_tokenizer))
    trainer = L.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, CodeShardDataModule(train_shards=str(shards[0]), batch_size=2, samples_per_epoch=2,
                                            num_workers=0))
    trainer.save_checkpoint(tmp_path / "full.ckpt")
    with pytest.raises(UserError, match="without model.lora"):
        export_lm(tmp_path / "full.ckpt", tmp_path / "adapter", adapter=True)
