"""A base model taught the chat format: its vocabulary grown by the chat markers.

The format itself (the markers, the template, ChatTokenizer) is a tokenizer's business:
mini_llm/tokenizer/chat.py.
"""

import dataclasses

import torch


@torch.no_grad()
def grow_vocabulary(model, vocab_size):
    """Give `model` rows for new token ids up to vocab_size, in place. Each new row of the
    embedding (and of an untied output layer) is the mean of the existing rows: a new token
    then starts as an average token, its logit near the mean logit, rather than a random
    direction that can dominate the softmax (Hewitt, "Initializing new word embeddings", 2021)."""
    old = model.config.vocab_size
    if vocab_size <= old:
        return model
    for layer in (model.wte, model.lm_head):
        if layer is None:  # tied weights: the output layer is wte
            continue
        mean = layer.weight.mean(dim=0, keepdim=True)
        layer.weight = torch.nn.Parameter(torch.cat([layer.weight, mean.expand(vocab_size - old, -1)]))
        if isinstance(layer, torch.nn.Embedding):
            layer.num_embeddings = vocab_size
        else:
            layer.out_features = vocab_size
    model.config = dataclasses.replace(model.config, vocab_size=vocab_size)
    return model
