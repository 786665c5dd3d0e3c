"""Plain numpy float64 re-derivations of the objectives and retrieval metrics, written from the equations in the
methods and evaluation references (explicit loops, no shared code with tpsearch_jax). Used only by the tests."""

from __future__ import annotations

import math

import numpy as np


def _f64(x):
  return np.asarray(x, dtype=np.float64)


def _logsumexp(z):
  z = _f64(z)
  finite = z[np.isfinite(z)]
  if finite.size == 0:
    return -np.inf
  top = finite.max()
  return top + np.log(np.sum(np.exp(z - top)))


def _log_softmax(z):
  return _f64(z) - _logsumexp(z)


def _unit_rows(x):
  x = _f64(x)
  return np.stack([r / np.sqrt(np.sum(r * r)) for r in x])


# --------------------------------------------------------------------------------------------------- SDM family


def sdm_rows(v, t, y, s=50.0, eps=1e-8):
  """r^{i2t}_i, r^{t2i}_i, cos c (c_ij = t̂_i·v̂_j) and the first-same-id index per row."""
  v, t = _unit_rows(v), _unit_rows(t)
  b = len(y)
  c = np.array([[np.dot(t[i], v[j]) for j in range(b)] for i in range(b)])
  q = np.zeros((b, b))
  for i in range(b):
    n_same = sum(1 for k in range(b) if y[k] == y[i])
    for j in range(b):
      q[i, j] = (1.0 if y[j] == y[i] else 0.0) / n_same

  def kl_row(logits, i):
    lp = _log_softmax(logits)
    return sum(np.exp(lp[j]) * (lp[j] - np.log(q[i, j] + eps)) for j in range(b))

  r_i2t = np.array([kl_row(s * c[:, i], i) for i in range(b)])
  r_t2i = np.array([kl_row(s * c[i, :], i) for i in range(b)])
  first = [min(k for k in range(b) if y[k] == y[i]) for i in range(b)]
  return r_i2t, r_t2i, c, first


def sdm(v, t, y, s=50.0, eps=1e-8):
  r_i2t, r_t2i, _, _ = sdm_rows(v, t, y, s, eps)
  return r_i2t.mean() + r_t2i.mean()


def asdm(v, t, y, s=50.0, alpha=0.1, gap="cosine", eps=1e-8, weights=None):
  """weights: (w_i2t, w_t2i) [B] each to use instead of the ones of (v, t) (a derivative through the row KLs only,
  i.e. what a detached weight would give); None computes them from (v, t)."""
  r_i2t, r_t2i, _, _ = sdm_rows(v, t, y, s, eps)
  if weights is not None:
    return np.mean(_f64(weights[0]) * r_i2t) + np.mean(_f64(weights[1]) * r_t2i)
  w_i2t, w_t2i = asdm_weights(v, t, y, s, alpha, gap, eps)
  return np.mean(w_i2t * r_i2t) + np.mean(w_t2i * r_t2i)


def asdm_weights(v, t, y, s=50.0, alpha=0.1, gap="cosine", eps=1e-8):
  """(w_i2t [B], w_t2i [B]) of A-SDM: 1 + α·gap per row of the direction's cosine matrix."""
  _, _, c, first = sdm_rows(v, t, y, s, eps)
  b = len(y)

  def weight(cmat, i):
    row = cmat[i]
    if gap == "cosine":
      k = int(np.argmax(row))
      g = 0.0 if k == first[i] else row[k] - row[first[i]]
    else:
      p = np.exp(_log_softmax(s * row))
      g = p.max() - p[i]
    return 1.0 + alpha * g

  return np.array([weight(c.T, i) for i in range(b)]), np.array([weight(c, i) for i in range(b)])


def _ce(logits, label):
  return -_log_softmax(logits)[int(label)]


def itc(v, t, s):
  v, t = _unit_rows(v), _unit_rows(t)
  b = v.shape[0]
  li = s * v @ t.T
  return 0.5 * (np.mean([_ce(li[i], i) for i in range(b)]) + np.mean([_ce(li[:, i], i) for i in range(b)]))


def id_loss(li, lt, y):
  return 0.5 * (np.mean([_ce(r, l) for r, l in zip(_f64(li), y)]) + np.mean([_ce(r, l) for r, l in zip(_f64(lt), y)]))


def mlm(logits, labels, ignore=0):
  logits = _f64(logits).reshape(-1, np.shape(logits)[-1])
  labels = np.asarray(labels).reshape(-1)
  terms = [_ce(logits[n], labels[n]) for n in range(len(labels)) if labels[n] != ignore]
  return float(np.mean(terms)) if terms else 0.0


# --------------------------------------------------------------------------------------------------- EFA


def _normalize12(x):
  n = np.sqrt(np.sum(x * x))
  return x / max(n, 1e-12)


def efa(t, v, m_t2e=0.1, m_i2e=0.9, temp=1.0, mask=None):
  """FMFA EFA from docs/methods.md §2.6 step by step; mask [B, L] (or None) leaves padded text positions out."""
  t, v = _f64(t), _f64(v)
  b, lt, _ = t.shape
  n = v.shape[1]
  valid = np.ones((b, lt), bool) if mask is None else np.asarray(mask, bool)
  e = np.zeros_like(t)
  for bi in range(b):
    for l in range(lt):
      if not valid[bi, l]:
        continue
      a = np.array([np.dot(t[bi, l], v[bi, k]) for k in range(n)])
      a = (a - a.min()) / (a.max() - a.min())
      a = np.where(a > 1.0 / n, a, 0.0)
      a = a / a.sum()
      e[bi, l] = sum(a[k] * v[bi, k] for k in range(n))

  def s_matrix(x, x_valid):
    xb, lx, _ = x.shape
    xh = np.array([[_normalize12(x[i, l]) for l in range(lx)] for i in range(xb)])
    eh = np.array([[_normalize12(e[j, m]) for m in range(lt)] for j in range(b)])
    s = np.zeros((b, b))
    for i in range(b):
      for j in range(b):
        sig = []
        for l in range(lx):
          if x_valid[i, l]:
            sig.append(max(np.dot(xh[i, l], eh[j, m]) for m in range(lt) if valid[j, m]) / temp)
        s[i, j] = _logsumexp(np.array(sig))
    return np.array([_normalize12(row) for row in s])

  def ell(s, m):
    g = np.zeros((b, b))
    h = np.zeros((b, b))
    for i in range(b):
      for j in range(b):
        if i != j:
          g[i, j] = s[i, j] - s[i, i] + m
          h[i, j] = s[i, j] - s[j, j] + m
    return (np.mean([_logsumexp(h[:, j]) for j in range(b)]) + np.mean([_logsumexp(g[:, j]) for j in range(b)]))

  s_t = s_matrix(t, valid)
  s_v = s_matrix(v, np.ones(v.shape[:2], bool))
  return ell(s_t, m_t2e) + ell(s_v, m_i2e)


def efa_paper(t, v, m_t2e, m_i2e, lam=1.0):
  """FMFA EFA as the paper's equations state it (docs/methods.md §2.6, "paper" row), written from them, not the code.

  Step 1: A_b = T_b V_bᵀ, per-row min-max, keep entries ≥ 1/N, divide by the row sum, E_b = W V_b.
  Step 2: S_ij = log Σ_l exp(max_m cos(x_il, e_jm) / λ), no normalisation of S.
  Step 3: per-anchor hinge-LSE with τ2 = 1, the anchor's own (zero) term inside:
          ℓ = (1/B) Σ_i log[1 + Σ_{j≠i} exp(S_ij − S_ii + m)] + (1/B) Σ_j log[1 + Σ_{i≠j} exp(S_ij − S_jj + m)].
  L = ℓ(S(T), m_t2e) + ℓ(S(V), m_i2e).
  """
  t, v = _f64(t), _f64(v)
  b, lt, _ = t.shape
  n = v.shape[1]
  e = np.zeros_like(t)
  for bi in range(b):
    for l in range(lt):
      a = t[bi] @ v[bi].T
      row = a[l]
      w = (row - row.min()) / (row.max() - row.min())
      w = w * (w >= 1.0 / n)
      w = w / w.sum()
      e[bi, l] = w @ v[bi]

  def cos(x, y):
    return float(np.dot(x, y) / (np.linalg.norm(x) * np.linalg.norm(y)))

  def s_matrix(x):
    s = np.zeros((b, b))
    for i in range(b):
      for j in range(b):
        s[i, j] = np.log(sum(math.exp(max(cos(x[i, l], e[j, m]) for m in range(lt)) / lam)
                             for l in range(x.shape[1])))
    return s

  def ell(s, m):
    rows = [math.log(1.0 + sum(math.exp(s[i, j] - s[i, i] + m) for j in range(b) if j != i)) for i in range(b)]
    cols = [math.log(1.0 + sum(math.exp(s[i, j] - s[j, j] + m) for i in range(b) if i != j)) for j in range(b)]
    return sum(rows) / b + sum(cols) / b

  return ell(s_matrix(t), m_t2e) + ell(s_matrix(v), m_i2e)


# --------------------------------------------------------------------------------------------------- ranking


def cosine_eps(a, b):
  a, b = _f64(a), _f64(b)
  a = np.stack([r / (np.sqrt(np.sum(r * r)) + 1e-8) for r in a])
  b = np.stack([r / (np.sqrt(np.sum(r * r)) + 1e-8) for r in b])
  return a @ b.T


def semi_hard_sets(sim, y, m):
  """For each anchor row a: the list of n with y_n ≠ y_a and S_aa − m < S_an < S_aa."""
  sim = _f64(sim)
  out = []
  for a in range(len(y)):
    out.append([n for n in range(len(y)) if y[n] != y[a] and 0 < sim[a, n] - sim[a, a] + m < m])
  return out


def _direction(sim, y, m, hinge, pick):
  sets = semi_hard_sets(sim, y, m)
  triplets = []
  for a, cands in enumerate(sets):
    if cands:
      triplets.append((a, pick(a, cands)))
  if not triplets:
    a = len(y) - 1
    negs = [n for n in range(len(y)) if y[n] != y[a]]
    if not negs:
      return 0.0
    triplets.append((a, negs[0]))
  return sum(max(hinge[a] - sim[a, a] + sim[a, n], 0.0) for a, n in triplets)


def _only_candidate(a, cands):
  assert len(cands) == 1, f"anchor {a} has {len(cands)} semi-hard candidates; the reference needs a pick rule"
  return cands[0]


def triplet(v, t, y, m=0.2, hinge=None, pick_img=_only_candidate, pick_txt=_only_candidate):
  """§2.7; ``pick_*(anchor, candidates)`` chooses the negative (default: demand exactly one candidate)."""
  s = cosine_eps(v, t)
  b = len(y)
  h_img = [m] * b if hinge is None else list(hinge[0])
  h_txt = [m] * b if hinge is None else list(hinge[1])
  return _direction(s, y, m, h_img, pick_img) + _direction(s.T, y, m, h_txt, pick_txt)


def batch_ranking(v, t, y, m=0.2, hinge=None, mining="batch_hard"):
  """Both directions summed over anchors, every anchor's triplets from the whole batch (no random draw):
  batch_all = mean over (positive p, negative n) of [m'_a − S_ap + S_an]_+; batch_hard = [m'_a − min_p S_ap +
  max_n S_an]_+ (positives: same id, the anchor's own pair included; 0 for an anchor without a negative)."""
  s = cosine_eps(v, t)
  b = len(y)
  h_img = [m] * b if hinge is None else list(hinge[0])
  h_txt = [m] * b if hinge is None else list(hinge[1])

  def direction(sim, h):
    total = 0.0
    for a in range(b):
      pos = [p for p in range(b) if y[p] == y[a]]
      neg = [n for n in range(b) if y[n] != y[a]]
      if not neg:
        continue
      if mining == "batch_all":
        total += np.mean([max(h[a] - sim[a, p] + sim[a, n], 0.0) for p in pos for n in neg])
      else:
        total += max(h[a] - min(sim[a, p] for p in pos) + max(sim[a, n] for n in neg), 0.0)
    return total

  return direction(s, h_img) + direction(s.T, h_txt)


def commonality_prob(logits, y):
  logits = _f64(logits)
  b, p, _ = logits.shape
  return np.array([[np.exp(_log_softmax(logits[a, i]))[y[a]] for i in range(p)] for a in range(b)])


def commonality_freq(parts, y, tau):
  parts = _f64(parts)
  b, p, _ = parts.shape
  out = np.zeros((b, p))
  for i in range(p):
    c = cosine_eps(parts[:, i], parts[:, i])
    for a in range(b):
      others = [n for n in range(b) if y[n] != y[a]]
      frac = sum(1 for n in others if c[a, n] > tau) / len(others) if others else 0.0
      out[a, i] = 1.0 - frac
  return out


def cmr(vp, tp, y, m=0.2, floor=0.05, score_img=None, score_txt=None, picks=None, mining="semi_hard"):
  """§2.8 with precomputed commonality scores [B, P]; ``picks[i]`` = (pick_img, pick_txt) for part i or None;
  mining "batch_all" / "batch_hard": each part's triplets as ``batch_ranking``."""
  vp, tp = _f64(vp), _f64(tp)
  total = 0.0
  for i in range(vp.shape[1]):
    hi = [max(m * score_img[a, i], floor) for a in range(len(y))]
    ht = [max(m * score_txt[a, i], floor) for a in range(len(y))]
    if mining != "semi_hard":
      total += batch_ranking(vp[:, i], tp[:, i], y, m, (hi, ht), mining)
      continue
    pi, pt = (_only_candidate, _only_candidate) if picks is None else picks[i]
    total += triplet(vp[:, i], tp[:, i], y, m, (hi, ht), pi, pt)
  return total


def ranking_all_or_hard(v, t, y, m=0.2, mining="batch_all", hinge=None, valid=None):
  """Batch-all / batch-hard ranking loss over every positive of the identity, summed over anchors of both
  directions. Positives of a: every b with y_b = y_a (own pair included), negatives y_n ≠ y_a; batch_all: the mean
  over (p, n) of [m'_a − S_ap + S_an]_+; batch_hard: [m'_a − min_p S_ap + max_n S_an]_+; 0 without a negative.
  ``valid``: rows left out entirely (the loss of the valid sub-batch)."""
  keep = list(range(len(y))) if valid is None else [i for i in range(len(y)) if valid[i]]
  s = cosine_eps(_f64(v)[keep], _f64(t)[keep])
  y = [y[i] for i in keep]
  hi = [m] * len(keep) if hinge is None else [hinge[0][i] for i in keep]
  ht = [m] * len(keep) if hinge is None else [hinge[1][i] for i in keep]
  total = 0.0
  for sim, h in ((s, hi), (s.T, ht)):
    for a in range(len(y)):
      pos = [p for p in range(len(y)) if y[p] == y[a]]
      neg = [n for n in range(len(y)) if y[n] != y[a]]
      if not neg:
        continue
      if mining == "batch_all":
        total += sum(max(h[a] - sim[a, p] + sim[a, n], 0.0) for p in pos for n in neg) / (len(pos) * len(neg))
      else:
        total += max(h[a] - min(sim[a, p] for p in pos) + max(sim[a, n] for n in neg), 0.0)
  return total


def cmr_all_or_hard(vp, tp, y, m, floor, score_img, score_txt, mining):
  """§2.8 margins max(m·score, floor) per anchor and part with ``ranking_all_or_hard`` mining, summed over parts."""
  vp, tp = _f64(vp), _f64(tp)
  total = 0.0
  for i in range(vp.shape[1]):
    hi = [max(m * score_img[a, i], floor) for a in range(len(y))]
    ht = [max(m * score_txt[a, i], floor) for a in range(len(y))]
    total += ranking_all_or_hard(vp[:, i], tp[:, i], y, m, mining, (hi, ht))
  return total


# --------------------------------------------------------------------------------------------------- derivatives


def central_difference(f, x, h=1e-6):
  """∂f/∂x [x.shape] of a scalar float64 function by central differences (step h on each entry of x)."""
  x = _f64(x)
  g = np.zeros_like(x)
  for idx in np.ndindex(x.shape):
    up, down = x.copy(), x.copy()
    up[idx] += h
    down[idx] -= h
    g[idx] = (f(up) - f(down)) / (2 * h)
  return g


def foreground_stripes(memory, fg, rows, cols, parts, features="signed"):
  """Park et al. image parts: memory [B, rows·cols, W] (row-major), map fg [B, rows·cols] → [B, parts, W], the max
  over each of ``parts`` horizontal stripes (stripe i: rows ⌊i·rows/parts⌋ … ⌊(i+1)·rows/parts⌋ − 1) of fg·M
  ("signed") or fg·(M − m) + m with m each image's per-channel minimum over all positions ("shifted")."""
  memory, fg = _f64(memory), _f64(fg)
  b, _, w = memory.shape
  out = np.zeros((b, parts, w))
  for a in range(b):
    low = memory[a].min(axis=0)
    for i in range(parts):
      r0, r1 = i * rows // parts, (i + 1) * rows // parts
      for c in range(w):
        vals = []
        for r in range(r0, r1):
          for q in range(cols):
            n = r * cols + q
            x = memory[a, n, c]
            vals.append(fg[a, n] * x if features == "signed" else fg[a, n] * (x - low[c]) + low[c])
        out[a, i, c] = max(vals)
  return out


# --------------------------------------------------------------------------------------------------- metrics


def retrieval_full_sort(sim, qpids, gpids):
  """IRRA-style metrics with a full descending argsort per query (percent)."""
  sim = _f64(sim)
  r1 = r5 = r10 = ap_sum = inp_sum = 0.0
  nq = 0
  for q in range(sim.shape[0]):
    order = np.argsort(-sim[q], kind="stable")
    match = (np.asarray(gpids)[order] == qpids[q]).astype(np.float64)
    n = match.sum()
    if n == 0:
      continue
    nq += 1
    hits = np.cumsum(match)
    r1 += float(hits[0] >= 1)
    r5 += float(hits[4 if len(hits) > 4 else -1] >= 1)
    r10 += float(hits[9 if len(hits) > 9 else -1] >= 1)
    ranks = np.arange(1, len(match) + 1)
    ap_sum += np.sum(match * hits / ranks) / n
    last = np.nonzero(match)[0].max() + 1
    inp_sum += n / last
  return {"R1": 100 * r1 / nq, "R5": 100 * r5 / nq, "R10": 100 * r10 / nq, "mAP": 100 * ap_sum / nq,
          "mINP": 100 * inp_sum / nq}
