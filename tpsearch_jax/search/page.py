"""The search page served at ``/``: a query box and the ranked grid (rank, score, thumbnail, why this match).

Plain HTML + JavaScript, no external resources. It calls ``/api/search`` and builds the grid with DOM calls
(``textContent`` only, so no query or path is ever parsed as HTML). Above the grid the query is shown as the model
read it: words past the context are struck through (``#reading .dropped``) with the count of tokens read. Each result
shows the query's phrases shaded by how much the score drops without them (``.phrase``, the drop in its title), a
"where?" button that draws the occlusion map over the thumbnail (``/occlusion/<id>.png``), and, for part models, the
foreground map with the P stripes (``/overlay/<id>.png``), each stripe's cosine beside its rows, and the pieces.
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
 #reading { margin: 4px 0 8px; line-height: 1.6; } #reading .dropped { text-decoration: line-through; color: #999; }
 #reading .note { color: #b05000; margin-left: 8px; } .phrases { font-size: 12px; max-width: 260px; margin-top: 4px; }
 .phrase { border-radius: 3px; padding: 0 2px; } .where { font-size: 11px; margin-top: 4px; }
 .occl { position: absolute; left: 0; top: 0; height: 192px; } .thumbbox { position: relative; }
</style></head>
<body>
<h1>Describe a person</h1>
<div id="info"></div>
<form id="form"><input id="q" name="q" autocomplete="off" autofocus
  placeholder="a woman in a red coat with a black backpack and white shoes">
 <input id="k" name="k" type="number" min="1" value="10" title="results">
 <select id="long" title="a query longer than the model reads"><option value="truncate">cut at context</option>
  <option value="mean">sentences: mean</option><option value="max">sentences: max</option></select>
 <button id="go" type="submit">Search</button>
</form>
<div id="status"></div>
<div id="reading"></div>
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
function showReading(d) {
  const box = $('reading'); box.replaceChildren();
  const q = d.query, cut = (d.dropped_from === null || d.dropped_from === undefined) ? q.length : d.dropped_from;
  box.appendChild(el('span', 'read', q.slice(0, cut)));
  if (cut < q.length) box.appendChild(el('span', 'dropped', q.slice(cut)));
  let note = d.read + ' of ' + d.tokens + ' tokens read (context ' + d.context_length + ')';
  if (d.dropped.length) note += '; not read: ' + d.dropped.join(' ');
  if (d.sentences.length > 1) note += '; ' + d.sentences.length + ' sentences, ' + d.long;
  box.appendChild(el('span', 'note' + (d.dropped.length ? ' warn' : ''), note));
}
function phraseLine(q, phrases) {
  const box = el('div', 'phrases');
  const top = Math.max(1e-6, ...phrases.map(p => Math.abs(p.drop)));
  let at = 0;
  for (const p of phrases) {
    if (p.start > at) box.appendChild(document.createTextNode(q.slice(at, p.start)));
    const s = el('span', 'phrase', q.slice(p.start, p.end));
    const a = Math.min(1, Math.abs(p.drop) / top);
    s.style.background = p.drop >= 0 ? 'rgba(255,170,0,' + (0.1 + 0.7 * a) + ')' : 'rgba(90,140,220,' + (0.1 + 0.5 * a) + ')';
    s.title = 'score drops by ' + p.drop.toFixed(3) + ' without this phrase';
    s.dataset.drop = p.drop;
    box.appendChild(s); at = p.end;
  }
  if (at < q.length) box.appendChild(document.createTextNode(q.slice(at)));
  return box;
}
function card(r, grid, q) {
  const c = el('div', 'result');
  c.dataset.rank = r.rank; c.dataset.path = r.path; c.dataset.score = r.score;
  const pics = el('div', 'pics');
  const a = el('a', 'thumbbox'); a.href = r.url; a.target = '_blank';
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
  if (r.explanation.phrases && r.explanation.phrases.length) c.appendChild(phraseLine(q, r.explanation.phrases));
  const w = el('button', 'where', 'where?'); w.type = 'button'; w.title = 'occlusion map: where the score comes from';
  w.addEventListener('click', () => {
    const old = a.querySelector('img.occl');
    if (old) { old.remove(); return; }
    const o = el('img', 'occl'); o.src = r.occlusion_url; o.alt = 'occlusion map'; a.appendChild(o);
  });
  c.appendChild(w);
  if (r.explanation.pieces.length > 1) c.appendChild(whyTable(r.explanation));
  return c;
}
async function search(ev) {
  if (ev) ev.preventDefault();
  const q = $('q').value, k = $('k').value || '10', long = $('long').value;
  const st = $('status'); st.className = ''; st.textContent = 'searching…';
  const tail = '?q=' + encodeURIComponent(q) + '&k=' + encodeURIComponent(k) + '&long=' + encodeURIComponent(long);
  const resp = await fetch('/api/search' + tail);
  const d = await resp.json();
  const box = $('results'); box.replaceChildren(); $('reading').replaceChildren();
  if (!resp.ok) { st.className = 'error'; st.textContent = d.error; return; }
  showReading(d);
  for (const r of d.results) box.appendChild(card(r, d.grid, d.query));
  st.textContent = d.results.length + ' results in ' + d.took_ms + ' ms';
  history.replaceState(null, '', tail);
}
$('form').addEventListener('submit', search);
const params = new URLSearchParams(location.search);
if (params.get('q')) {
  $('q').value = params.get('q'); if (params.get('k')) $('k').value = params.get('k');
  if (params.get('long')) $('long').value = params.get('long');
  search();
}
</script>
</body></html>
"""
