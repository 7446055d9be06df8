"""The last encoder layer computed for the first token only, while a sequence classifier trains or predicts.

A BERT-family sequence classifier (BERT, RoBERTa, XLM-R, CamemBERT, ELECTRA) reads one vector: the last layer's
output at the first token ([CLS] / <s>). The last layer's output at every other token is computed and thrown
away. `first_token_last_layer(model)` makes that layer compute its attention queries, attention output and
feed-forward for the first token only; its keys and values still come from every token, so the first token's
vector, the logits, the loss and every gradient are what the whole layer gives (to float rounding: 2e-8 on
MiniLM-L6 logits). The work saved is most of one layer in `layers` (docs/speed.md has the measurements).

`restore_last_layer(model)` puts the layer's own forward back before the model is scored and saved, so the
final figures are those `ftune eval` computes with the model as saved. `first_token_last_layer` checks for
itself which models it fits; `ftune.cpu.cpu_speedups` applies it while a model trains on a CPU, and
`ftune.cpu.scoring_speedups` while its forward pass predicts there.
"""

from __future__ import annotations

import types

# Classifiers whose head reads the last layer's output at the first token only, with BERT's layer structure.
FIRST_TOKEN_CLASSIFIERS = ("BertForSequenceClassification", "RobertaForSequenceClassification",
                           "XLMRobertaForSequenceClassification", "CamembertForSequenceClassification",
                           "ElectraForSequenceClassification")
_MARK = "_ftune_first_token_only"


def first_token_last_layer(model) -> bool:
    """Make the last encoder layer of `model` (or of the peft model around it) compute the first token only;
    False, changing nothing, where the model is not such a classifier or its last layer not BERT's."""
    layer = _last_layer(model)
    if layer is None or _MARK in layer.__dict__:
        return False
    layer.forward = types.MethodType(_first_token_forward, layer)
    layer.__dict__[_MARK] = True
    return True


def restore_last_layer(model) -> None:
    """Undo `first_token_last_layer`."""
    layer = _last_layer(model)
    if layer is not None and layer.__dict__.pop(_MARK, False):
        del layer.forward


def _last_layer(model):
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if type(base).__name__ not in FIRST_TOKEN_CLASSIFIERS:
        return None
    config = base.config
    if getattr(config, "is_decoder", False) or getattr(config, "add_cross_attention", False):
        return None
    layers = getattr(getattr(base.base_model, "encoder", None), "layer", None)
    if not layers:
        return None
    layer = layers[-1]
    attention = getattr(layer, "attention", None)
    own = getattr(attention, "self", None)
    if not (all(hasattr(own, name) for name in ("query", "key", "value", "attention_head_size", "scaling",
                                                  "dropout", "config"))
            and hasattr(attention, "output") and hasattr(layer, "feed_forward_chunk")):
        return None
    return layer


def _first_token_forward(self, hidden_states, attention_mask=None, *args, **kwargs):
    """BERT's layer (self-attention, then feed-forward) with queries and outputs at the first token only; the
    output holds that one position."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    from transformers.models.bert.modeling_bert import eager_attention_forward

    own = self.attention.self
    batch, length = hidden_states.shape[:2]
    first = hidden_states[:, :1]

    def heads(states, positions):
        return states.view(batch, positions, -1, own.attention_head_size).transpose(1, 2)

    query = heads(own.query(first), 1)
    key, value = heads(own.key(hidden_states), length), heads(own.value(hidden_states), length)
    if attention_mask is not None and attention_mask.dim() == 4 and attention_mask.shape[-2] > 1:
        attention_mask = attention_mask[:, :, :1, :]  # the first token's row of a (batch, 1, query, key) mask
    attend = ALL_ATTENTION_FUNCTIONS.get_interface(own.config._attn_implementation, eager_attention_forward)
    attended, _ = attend(own, query, key, value, attention_mask, dropout=own.dropout.p if own.training else 0.0,
                         scaling=own.scaling)
    attention_output = self.attention.output(attended.reshape(batch, 1, -1).contiguous(), first)
    return self.feed_forward_chunk(attention_output)
