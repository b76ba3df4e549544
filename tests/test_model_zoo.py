"""Architectures from Hugging Face transformers and timm, tiny and in float64: the fast per-sample
norms must agree with plain autograd one sample at a time (``verify_model``), or refuse clearly.

Each one exercises a different way parameters are used: rotary and learned position embeddings
(1, T, d) broadcast over the batch, tied heads, Conv1D, the batch flattened into rows (Swin's
windows, OPT's feed-forward), BatchNorm with running statistics and in-place residual additions (ResNet), a
distillation token, token-mixing MLPs."""

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from specreach.lnp.verify import verify_model

transformers = pytest.importorskip("transformers")
timm = pytest.importorskip("timm")

from specreach.integrations.transformers import CausalLMLogits, next_token_loss  # noqa: E402


class ClassifierLogits(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask=None):
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits


def language_model(model):
    ids = torch.randint(0, 50, (3, 8))
    return CausalLMLogits(model), next_token_loss, ({"input_ids": ids, "attention_mask": torch.ones_like(ids)},
                                                    ids[:, 1:])


def hf_llama():
    return language_model(transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=16)))


def hf_gpt_neox():
    return language_model(transformers.GPTNeoXForCausalLM(transformers.GPTNeoXConfig(
        vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        max_position_embeddings=16)))


def hf_gpt2():
    return language_model(transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=50, n_positions=16, n_embd=16, n_layer=2, n_head=2)))


def hf_opt():
    """OPT flattens the batch into rows and normalizes them before its feed-forward."""
    return language_model(transformers.OPTForCausalLM(transformers.OPTConfig(
        vocab_size=50, hidden_size=16, ffn_dim=32, num_hidden_layers=2, num_attention_heads=2,
        max_position_embeddings=16, word_embed_proj_dim=16)))


def hf_bert():
    model = ClassifierLogits(transformers.BertForSequenceClassification(transformers.BertConfig(
        vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        max_position_embeddings=16, num_labels=3)))
    ids = torch.randint(0, 50, (3, 8))
    return model, F.cross_entropy, ({"input_ids": ids, "attention_mask": torch.ones_like(ids)},
                                    torch.randint(0, 3, (3,)))


def timm_model(name, **options):
    def build():
        model = timm.create_model(name, pretrained=False, num_classes=5, **options)
        return model, F.cross_entropy, (torch.randn(3, 3, 32, 32), torch.randint(0, 5, (3,)))
    return build


ZOO = {
    "hf-llama": hf_llama,
    "hf-gpt-neox": hf_gpt_neox,
    "hf-gpt2": hf_gpt2,
    "hf-opt": hf_opt,
    "hf-bert": hf_bert,
    "timm-vit": timm_model("vit_tiny_patch16_224", img_size=32, patch_size=8),
    "timm-deit-distilled": timm_model("deit_tiny_distilled_patch16_224", img_size=32, patch_size=8),
    "timm-swin": timm_model("swin_tiny_patch4_window7_224", img_size=32, window_size=2),
    "timm-convnext": timm_model("convnext_atto"),
    "timm-mixer": timm_model("mixer_s16_224", img_size=32),
    "timm-resnet": timm_model("resnet18"),
}


@pytest.mark.parametrize("name", list(ZOO))
def test_fast_norms_agree_with_plain_autograd(float64, name):
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, loss_fn, batch = ZOO[name]()
        report = verify_model(model.double().eval(), loss_fn, batch, raise_on_mismatch=False)
    assert report.ok, report.describe()
    assert any("VJP" in path for path in report.paths.values()) == (name in VJP_EXPECTED), report.paths


#: Where a per-sample VJP is still needed: Swin's relative position bias table, indexed and handed to the
#: attention as its mask. (GPT-2's Conv1D, ConvNeXt's LayerNorm2d and ResNet's BatchNorm2d have rules.)
VJP_EXPECTED = {"timm-swin"}
