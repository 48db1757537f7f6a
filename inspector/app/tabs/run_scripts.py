"""The Run tab's scripts, which run in the browser: the trend chart's clicks and narrow layout, the address that
follows the step and tab picked, and the tab a link names."""

RUN_JS = r"""
() => {
  // A click on a point of a trend chart picks its step (through the hidden #run-click box).
  // On a narrow screen the server's two-column trend figure becomes one column, every panel the full width,
  // its title above it and the legend below the last one (the server cannot know the width).
  const oneColumn = (gd) => {
    const L = gd.layout || {};
    if (!window.Plotly || !L.xaxis2 || gd.clientWidth >= 640 || L.xaxis2.domain[0] < 0.3) return;
    const n = (L.annotations || []).filter((a) => a.xref === 'paper' && a.yanchor === 'bottom').length;
    const h = 190, gap = 70, plot = n * h + (n - 1) * gap;
    const items = (gd.data || []).length + new Set((gd.data || []).map((t) => t.legendgroup)).size;
    const legend = 22 * items + 20, upd = {height: plot + 50 + legend + 60, 'margin.b': legend + 60,
      'legend.y': -50 / plot, 'legend.orientation': 'v'};
    const axes = Object.keys(L).filter((k) => /^xaxis\d*$/.test(k)).length;
    for (let k = 0; k < axes; k++) {
      const x = 'xaxis' + (k ? k + 1 : ''), y = 'yaxis' + (k ? k + 1 : '');
      if (k < n) {
        const top = 1 - k * (h + gap) / plot;
        upd[x + '.domain'] = [0, 1]; upd[y + '.domain'] = [top - h / plot, top];
        upd[x + '.title.text'] = k === n - 1 ? 'step' : '';
        upd['annotations[' + k + '].x'] = 0.5; upd['annotations[' + k + '].y'] = top;
      } else {
        upd[x + '.visible'] = false; upd[y + '.visible'] = false;
      }
    }
    window.Plotly.relayout(gd, upd);
  };
  window.addEventListener('resize', () => document.querySelectorAll('#run-trends .js-plotly-plot').forEach(oneColumn));
  const hook = () => {
    document.querySelectorAll('#run-trends .js-plotly-plot').forEach((gd) => {
      if (gd._runHooked || !gd.on) return;
      gd._runHooked = true;
      gd.on('plotly_afterplot', () => oneColumn(gd));
      oneColumn(gd);
      gd.on('plotly_click', (ev) => {
        const pt = ev && ev.points && ev.points[0];
        if (!pt) return;
        const box = document.querySelector('#run-click textarea, #run-click input');
        if (!box) return;
        box.value = String(pt.customdata !== undefined ? pt.customdata : pt.x) + '#' + Date.now();
        box.dispatchEvent(new Event('input', {bubbles: true}));
      });
    });
  };
  new MutationObserver(hook).observe(document.body, {childList: true, subtree: true});
  // The address follows the tab picked; a tab the visitor picked is never taken back by the arrival's.
  document.addEventListener('click', (e) => {
    const b = e.target.closest && e.target.closest('[role=tab]');
    if (!b || !b.id || !b.id.startsWith('tab-')) return;
    if (e.isTrusted) window.inspectorTabPicked = true;
    const u = new URL(window.location.href);
    u.searchParams.set('tab', b.id.replace(/^tab-/, '').replace(/-button$/, ''));
    window.history.replaceState(null, '', u);
  }, true);
}
"""

ADDRESS_JS = """
(source, step, sample) => {
  if (step === null || step === undefined || step === '') return [];
  const u = new URL(window.location.href);
  const set = (k, v) => (v === null || v === undefined || v === '') ? u.searchParams.delete(k) : u.searchParams.set(k, v);
  set('run', source); set('step', step); set('sample', sample);
  u.searchParams.delete('example');
  window.history.replaceState(null, '', u);
  return [];
}
"""

ARRIVAL_TAB_JS = """
(tab) => {
  // The tab the link names, unless the visitor has picked a tab since the page opened: the arrival ends a moment
  // after the page shows, and must not take the visitor back from the tab they went to.
  if (tab && !window.inspectorTabPicked) {
    const button = document.getElementById('tab-' + tab + '-button');
    if (button) button.click();
  }
  document.documentElement.dataset.arrival = 'done';  // the page's arrival has ended (a mark tests can wait on)
  return [];
}
"""
