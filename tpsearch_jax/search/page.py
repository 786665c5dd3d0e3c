"""The search page served at ``/``: a query box and the ranked grid (rank, score, thumbnail, why this match).

Plain HTML + JavaScript, no external resources. It calls ``/api/search`` and builds the grid with DOM calls
(``textContent`` only, so no query or path is ever parsed as HTML). For part models each result also shows the
foreground map with the P stripes (``/overlay/<id>.png``) and each stripe's cosine with the matching text part token
beside its rows.
"""

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>tpsearch_jax search</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
 body { font: 14px system-ui, sans-serif; margin: 16px; color: #222; background: #fafafa; }
 h1 { font-size: 20px; margin: 0 0 4px; } #info { color: #666; margin-bottom: 10px; }
 form { display: flex; gap: 8px; margin-bottom: 10px; }
 #q { flex: 1; font-size: 16px; padding: 6px 8px; } #k { width: 60px; }
 #status { color: #555; margin: 6px 0; min-height: 18px; } #status.error { color: #b00020; font-weight: 600; }
 #results { display: flex; flex-wrap: wrap; gap: 10px; }
 .result { background: #fff; border: 1px solid #ddd; border-radius: 6px; padding: 6px; }
 .pics { display: flex; gap: 4px; } .pics img { height: 192px; display: block; }
 .ov { position: relative; } .stripe { position: absolute; right: -46px; width: 44px; font-size: 11px;
   display: flex; align-items: center; justify-content: center; border-left: 3px solid #ccc; }
 .pics.parts { margin-right: 48px; }
 .head { font-weight: 600; margin-top: 4px; } .path { color: #666; font-size: 12px; max-width: 260px;
   overflow-wrap: anywhere; }
 table.why { border-collapse: collapse; font-size: 11px; margin-top: 4px; }
 table.why td { padding: 0 4px; } .bar { height: 8px; background: #4a7bd0; }
 .bar.neg { background: #d05a4a; }
</style></head>
<body>
<h1>Describe a person</h1>
<div id="info"></div>
<form id="form"><input id="q" name="q" autocomplete="off" autofocus
  placeholder="a woman in a red coat with a black backpack and white shoes">
 <input id="k" name="k" type="number" min="1" value="10" title="results"><button id="go" type="submit">Search</button>
</form>
<div id="status"></div>
<div id="results"></div>
<script>
const $ = (id) => document.getElementById(id);
function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}
fetch('/api/info').then(r => r.json()).then(d => {
  $('info').textContent = d.num_images + ' images in ' + d.images_root + ' — ' + d.method + ' run, step ' +
    d.step + (d.parts ? ', part-level explanations' : '');
  $('q').maxLength = d.max_query_chars; $('k').max = d.max_k;
});
function whyTable(ex) {
  const t = el('table', 'why');
  const pieces = ex.pieces.filter(p => !p.name.startsWith('part_'));
  const parts = ex.pieces.filter(p => p.name.startsWith('part_'));
  if (parts.length) pieces.push({name: 'stripes (mean)', weight: parts.length * parts[0].weight,
    cosine: parts.reduce((a, p) => a + p.cosine, 0) / parts.length,
    contribution: parts.reduce((a, p) => a + p.contribution, 0)});
  const top = Math.max(1e-6, ...pieces.map(p => Math.abs(p.contribution)));
  for (const p of pieces) {
    const tr = el('tr');
    tr.appendChild(el('td', '', p.name));
    tr.appendChild(el('td', '', 'cos ' + p.cosine.toFixed(3)));
    tr.appendChild(el('td', '', '×w ' + p.weight));
    const bar = el('div', 'bar' + (p.contribution < 0 ? ' neg' : ''));
    bar.style.width = Math.round(60 * Math.abs(p.contribution) / top) + 'px';
    bar.title = 'contribution w·cos/Σw = ' + p.contribution.toFixed(3);
    const td = el('td'); td.appendChild(bar); tr.appendChild(td);
    t.appendChild(tr);
  }
  return t;
}
function card(r, grid) {
  const c = el('div', 'result');
  c.dataset.rank = r.rank; c.dataset.path = r.path; c.dataset.score = r.score;
  const pics = el('div', 'pics');
  const a = el('a'); a.href = r.url; a.target = '_blank';
  const img = el('img', 'thumb'); img.src = r.thumb_url; img.alt = r.path; a.appendChild(img); pics.appendChild(a);
  if (r.overlay_url) {
    pics.classList.add('parts');
    const ov = el('div', 'ov');
    const oimg = el('img', 'overlay'); oimg.src = r.overlay_url; oimg.alt = 'foreground map and stripes';
    ov.appendChild(oimg);
    for (const s of r.explanation.stripes) {
      const d = el('div', 'stripe', s.cosine.toFixed(2));
      d.style.top = (100 * s.rows[0] / grid[0]) + '%';
      d.style.height = (100 * (s.rows[1] - s.rows[0]) / grid[0]) + '%';
      const g = Math.round(255 * Math.max(0, Math.min(1, s.cosine)));
      d.style.borderLeftColor = 'rgb(' + (255 - g) + ',' + (120 + g / 2) + ',60)';
      d.title = 'stripe rows ' + s.rows[0] + '-' + (s.rows[1] - 1) + ': cosine with text part token';
      ov.appendChild(d);
    }
    pics.appendChild(ov);
  }
  c.appendChild(pics);
  c.appendChild(el('div', 'head', '#' + r.rank + '  ' + r.score.toFixed(3)));
  c.appendChild(el('div', 'path', r.path));
  c.appendChild(whyTable(r.explanation));
  return c;
}
async function search(ev) {
  if (ev) ev.preventDefault();
  const q = $('q').value, k = $('k').value || '10';
  const st = $('status'); st.className = ''; st.textContent = 'searching…';
  const resp = await fetch('/api/search?q=' + encodeURIComponent(q) + '&k=' + encodeURIComponent(k));
  const d = await resp.json();
  const box = $('results'); box.replaceChildren();
  if (!resp.ok) { st.className = 'error'; st.textContent = d.error; return; }
  for (const r of d.results) box.appendChild(card(r, d.grid));
  st.textContent = d.results.length + ' results in ' + d.took_ms + ' ms';
  history.replaceState(null, '', '?q=' + encodeURIComponent(q) + '&k=' + encodeURIComponent(k));
}
$('form').addEventListener('submit', search);
const params = new URLSearchParams(location.search);
if (params.get('q')) { $('q').value = params.get('q'); if (params.get('k')) $('k').value = params.get('k'); search(); }
</script>
</body></html>
"""
