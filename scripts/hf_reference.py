#!/usr/bin/env python3
"""Independent reference values for prunekit's Hugging Face / GGUF readers (issue 13).

  embed DIR TEXT...            sentence-transformers' embeddings and cosines (JSON)
  hidden DIR TEXT OUT.npy      transformers' BertModel last_hidden_state of one text
  ppl GGUF TEXTFILE --context N --stride S [--max-tokens M]
                               perplexity of transformers' LlamaForCausalLM over the GGUF's
                               dequantised weights (transformers' own GGUF reader), HF protocol
  generate GGUF PROMPT N       greedy continuation (JSON)

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


def main():
    p = argparse.ArgumentParser()
    s = p.add_subparsers(dest="cmd", required=True)
    e = s.add_parser("embed"); e.add_argument("model"); e.add_argument("texts", nargs="+")
    q = s.add_parser("ppl"); q.add_argument("model"); q.add_argument("text")
    q.add_argument("--context", type=int, default=512); q.add_argument("--stride", type=int)
    q.add_argument("--max-tokens", type=int)
    g = s.add_parser("generate"); g.add_argument("model"); g.add_argument("prompt"); g.add_argument("tokens", type=int)
    a = p.parse_args()
    if a.cmd == "ppl" and a.stride is None:
        a.stride = a.context
    {"embed": embed, "ppl": ppl, "generate": generate}[a.cmd](a)


if __name__ == "__main__":
    main()
