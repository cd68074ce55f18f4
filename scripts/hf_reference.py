#!/usr/bin/env python3
"""Independent reference values for prunekit's Hugging Face / GGUF readers (issue 13).

  embed DIR TEXT...            sentence-transformers' embeddings and cosines (JSON)
  hidden DIR TEXT OUT.npy      transformers' BertModel last_hidden_state of one text
  ppl GGUF TEXTFILE --context N --stride S [--max-tokens M]
                               perplexity of transformers' LlamaForCausalLM over the GGUF's
                               dequantised weights (transformers' own GGUF reader), HF protocol
  generate GGUF PROMPT N       greedy continuation (JSON)
  gpt2 OUTDIR                  a random tiny GPT2LMHeadModel saved by transformers (safetensors,
                               tied lm_head) with OUTDIR/ids.npy [2, 7] and OUTDIR/logits.npy
                               [2, 7, vocab]
  logits DIR IDS.npy OUT.npy   transformers' logits of a GPT-2 directory (e.g. one prunekit wrote)

Needs .venv-torch with transformers, sentence-transformers and gguf (scripts/setup-torch.sh).
"""
import argparse, json, math, os, sys


def embed(a):
    from sentence_transformers import SentenceTransformer
    m = SentenceTransformer(a.model, device="cpu")
    e = m.encode(a.texts, convert_to_numpy=True, normalize_embeddings=False)
    cos = (e @ e.T).tolist()
    print(json.dumps({"embeddings": e.tolist(), "cosine": cos}))


def gguf_model(path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    d, f = os.path.split(os.path.abspath(path))
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, torch_dtype=torch.float32)
    model.eval()
    return tok, model


def ppl(a):
    import torch
    tok, model = gguf_model(a.model)
    text = open(a.text, encoding="utf-8").read()
    ids = tok(text, add_special_tokens=False, return_tensors="pt").input_ids[0]
    if a.max_tokens:
        ids = ids[: a.max_tokens]
    n = len(ids)
    nll, count, prev_end, start = 0.0, 0, 1, 0
    with torch.no_grad():
        while True:
            end = min(start + a.context, n)
            x = ids[start:end].unsqueeze(0)
            logits = model(x).logits[0].double()
            logp = torch.log_softmax(logits, -1)
            for p in range(end - start - 1):
                target = start + p + 1
                if target >= prev_end:
                    nll -= logp[p, ids[target]].item()
                    count += 1
            prev_end = max(prev_end, end)
            if end >= n:
                break
            start += a.stride
    print(json.dumps({"perplexity": math.exp(nll / count), "tokens": n, "scored": count,
                      "context": a.context, "stride": a.stride}))


def generate(a):
    import torch
    tok, model = gguf_model(a.model)
    x = tok(a.prompt, add_special_tokens=False, return_tensors="pt").input_ids
    with torch.no_grad():
        y = model.generate(x, max_new_tokens=a.tokens, do_sample=False)
    new = y[0, x.shape[1]:]
    print(json.dumps({"ids": new.tolist(), "text": tok.decode(new, skip_special_tokens=True)}))


def gpt2(a):
    import numpy as np
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=50, n_positions=16, n_embd=24, n_layer=2, n_head=4, n_inner=40,
                     activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():  # larger than the default init, so every part of the forward shows
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    model.save_pretrained(a.out, safe_serialization=True)
    ids = torch.randint(0, cfg.vocab_size, (2, 7), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = model(ids).logits
    np.save(os.path.join(a.out, "ids.npy"), ids.numpy().astype(np.int64))
    np.save(os.path.join(a.out, "logits.npy"), logits.numpy().astype(np.float32))


def logits(a):
    import numpy as np
    import torch
    from transformers import GPT2LMHeadModel
    model = GPT2LMHeadModel.from_pretrained(a.model).eval()
    ids = torch.from_numpy(np.load(a.ids).astype(np.int64))
    with torch.no_grad():
        y = model(ids).logits
    np.save(a.out, y.numpy().astype(np.float32))


def main():
    p = argparse.ArgumentParser()
    s = p.add_subparsers(dest="cmd", required=True)
    e = s.add_parser("embed"); e.add_argument("model"); e.add_argument("texts", nargs="+")
    q = s.add_parser("ppl"); q.add_argument("model"); q.add_argument("text")
    q.add_argument("--context", type=int, default=512); q.add_argument("--stride", type=int)
    q.add_argument("--max-tokens", type=int)
    g = s.add_parser("generate"); g.add_argument("model"); g.add_argument("prompt"); g.add_argument("tokens", type=int)
    t = s.add_parser("gpt2"); t.add_argument("out")
    l = s.add_parser("logits"); l.add_argument("model"); l.add_argument("ids"); l.add_argument("out")
    a = p.parse_args()
    if a.cmd == "ppl" and a.stride is None:
        a.stride = a.context
    {"embed": embed, "ppl": ppl, "generate": generate, "gpt2": gpt2, "logits": logits}[a.cmd](a)


if __name__ == "__main__":
    main()
