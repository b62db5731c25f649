// The catalog's map view: the published COGs read in the browser (OpenLayers' GeoTIFF source over
// HTTP range requests), class colours from the legend, a layer and year selector, a swipe to
// compare two years and a pixel inspector reading every layer at the clicked pixel through the
// years (geotiff.js). The page (map.html, written by ecocube.browse) embeds the layer list as JSON
// in <script id="ecocube-map-data" type="application/json">. Nothing is fetched but the catalog's
// own files. Rebuild the bundle with scripts/build-map.sh.
import Map from 'ol/Map.js';
import View from 'ol/View.js';
import TileLayer from 'ol/layer/WebGLTile.js';
import GeoTIFF from 'ol/source/GeoTIFF.js';
import {getRenderPixel} from 'ol/render.js';
import {defaults as defaultControls, ScaleLine} from 'ol/control.js';
import {fromUrl} from 'geotiff';
import 'ol/ol.css';

const data = JSON.parse(document.getElementById('ecocube-map-data').textContent);
const $ = (id) => document.getElementById(id);
const absolute = (href) => new URL(href, document.baseURI).href;

function hexToRgba(hex, alpha = 1) {
  const h = (hex || '888888').replace('#', '');
  return [parseInt(h.slice(0, 2), 16), parseInt(h.slice(2, 4), 16), parseInt(h.slice(4, 6), 16), alpha];
}

// the WebGL style of one band of a layer: classes → legend colours, else a ramp between min and max
function styleFor(layer) {
  const band = ['band', layer.band + 1];
  const info = layer.bands[layer.band];
  if (layer.classes && layer.classes.length) {
    const cases = ['case'];
    for (const c of layer.classes) {
      cases.push(['==', band, c.value], hexToRgba(c.color));
    }
    cases.push([0, 0, 0, 0]);
    return {color: cases};
  }
  const lo = info.raw_min, hi = info.raw_max > info.raw_min ? info.raw_max : info.raw_min + 1;
  const ramp = ['interpolate', ['linear'], band,
    lo, [68, 1, 84, 1], lo + (hi - lo) * 0.25, [59, 82, 139, 1], lo + (hi - lo) * 0.5, [33, 145, 140, 1],
    lo + (hi - lo) * 0.75, [94, 201, 98, 1], hi, [253, 231, 37, 1]];
  if (info.nodata === null || info.nodata === undefined) {
    return {color: ramp};
  }
  return {color: ['case', ['==', band, info.nodata], [0, 0, 0, 0], ramp]};
}

function sourceFor(href) {
  return new GeoTIFF({sources: [{url: absolute(href)}], normalize: false, interpolate: false, transition: 0,
    convertToRGB: false});
}

const layers = data.layers;
const state = {layer: 0, yearA: 0, yearB: Math.max(0, layers.length ? layers[0].items.length - 1 : 0), swipe: 50};

const layerA = new TileLayer({});
const layerB = new TileLayer({});
const map = new Map({target: 'map', layers: [layerB, layerA], controls: defaultControls().extend([new ScaleLine()])});
let viewSet = false;
let rendered = 0;
map.on('rendercomplete', () => { rendered += 1; document.body.dataset.rendered = String(rendered); });

// swipe: the top layer (year A) is drawn left of the slider only
layerA.on('prerender', (event) => {
  const gl = event.context;
  gl.enable(gl.SCISSOR_TEST);
  const size = map.getSize();
  const bottomLeft = getRenderPixel(event, [0, size[1]]);
  const topRight = getRenderPixel(event, [size[0], 0]);
  const width = Math.round((topRight[0] - bottomLeft[0]) * (state.swipe / 100));
  gl.scissor(bottomLeft[0], bottomLeft[1], width, topRight[1] - bottomLeft[1]);
});
layerA.on('postrender', (event) => event.context.disable(event.context.SCISSOR_TEST));

function fillSelect(select, options, selected) {
  select.innerHTML = '';
  options.forEach((text, i) => {
    const opt = document.createElement('option');
    opt.value = String(i);
    opt.textContent = text;
    if (i === selected) opt.selected = true;
    select.appendChild(opt);
  });
}

function renderLegend(layer) {
  const box = $('legend');
  box.innerHTML = '';
  if (layer.classes && layer.classes.length) {
    for (const c of layer.classes) {
      const row = document.createElement('div');
      row.innerHTML = '<span class="sw"></span>';
      row.firstChild.style.background = '#' + c.color;
      row.appendChild(document.createTextNode(`${c.value} ${c.name}`));
      box.appendChild(row);
    }
  } else {
    const info = layer.bands[layer.band];
    const row = document.createElement('div');
    row.innerHTML = '<span class="ramp"></span>';
    row.appendChild(document.createTextNode(
      ` ${fmt(info.min)} – ${fmt(info.max)}${info.unit ? ' ' + info.unit : ''}`));
    box.appendChild(row);
  }
}

function update() {
  const layer = layers[state.layer];
  const items = layer.items;
  state.yearA = Math.min(state.yearA, items.length - 1);
  state.yearB = Math.min(state.yearB, items.length - 1);
  const style = styleFor(layer);
  const srcA = sourceFor(items[state.yearA].href);
  const srcB = sourceFor(items[state.yearB].href);
  layerA.setSource(srcA);
  layerA.setStyle(style);
  layerB.setSource(srcB);
  layerB.setStyle(style);
  if (!viewSet) {
    viewSet = true;
    srcA.getView().then((options) => {
      map.setView(new View({...options, showFullExtent: true}));
      map.getView().fit(options.extent, {size: map.getSize()});
    }).catch((err) => showError(`cannot open ${items[state.yearA].href}: ${err}`));
  }
  $('year-a-label').textContent = items[state.yearA].period;
  $('year-b-label').textContent = items[state.yearB].period;
  renderLegend(layer);
  document.body.dataset.layer = layer.id;
}

function showError(text) {
  const box = $('map-error');
  box.textContent = text;
  box.hidden = false;
}

function initControls() {
  fillSelect($('layer'), layers.map((l) => l.title), state.layer);
  const periods = () => layers[state.layer].items.map((it) => it.period);
  fillSelect($('year-a'), periods(), state.yearA);
  fillSelect($('year-b'), periods(), state.yearB);
  $('layer').addEventListener('change', (e) => {
    state.layer = Number(e.target.value);
    state.yearA = 0;
    state.yearB = layers[state.layer].items.length - 1;
    fillSelect($('year-a'), periods(), state.yearA);
    fillSelect($('year-b'), periods(), state.yearB);
    update();
  });
  $('year-a').addEventListener('change', (e) => { state.yearA = Number(e.target.value); update(); });
  $('year-b').addEventListener('change', (e) => { state.yearB = Number(e.target.value); update(); });
  $('swipe').addEventListener('input', (e) => { state.swipe = Number(e.target.value); map.render(); });
}

// ----------------------------------------------------------------------------- pixel inspector

const tiffs = new globalThis.Map();
function openImage(href) {
  const url = absolute(href);
  if (!tiffs.has(url)) {
    tiffs.set(url, fromUrl(url).then((tiff) => tiff.getImage()));
  }
  return tiffs.get(url);
}

function fmt(v) {
  if (v === null || v === undefined || Number.isNaN(v)) return '–';
  if (Number.isInteger(v)) return String(v);
  return Math.abs(v) >= 100 ? v.toFixed(1) : v.toPrecision(4).replace(/\.?0+$/, '');
}

// the values of every band of one asset at map coordinate xy, scaled; null outside the raster
async function readPixel(href, bands, xy) {
  const image = await openImage(href);
  const [ox, oy] = image.getOrigin();
  const [rx, ry] = image.getResolution();
  const col = Math.floor((xy[0] - ox) / rx);
  const row = Math.floor((xy[1] - oy) / ry);
  if (col < 0 || row < 0 || col >= image.getWidth() || row >= image.getHeight()) return null;
  const rasters = await image.readRasters({window: [col, row, col + 1, row + 1], interleave: false});
  return {col, row, values: Array.from(rasters, (r, b) => {
    const raw = r[0];
    const info = bands[b] || {};
    if (info.nodata !== null && info.nodata !== undefined && raw === info.nodata) return {raw, value: null};
    return {raw, value: raw * (info.scale ?? 1) + (info.offset ?? 0)};
  })};
}

function cellText(value, classes) {
  if (value.value === null) return 'no data';
  if (classes && classes.length) {
    const c = classes.find((k) => k.value === value.raw);
    return c ? `${value.raw} ${c.name}` : String(value.raw);
  }
  return fmt(value.value);
}

async function inspect(xy) {
  const panel = $('inspector');
  panel.innerHTML = '';
  const head = document.createElement('p');
  head.className = 'where';
  head.textContent = `x ${xy[0].toFixed(1)}, y ${xy[1].toFixed(1)}`;
  panel.appendChild(head);
  const seen = new Set();
  for (const layer of layers) {
    const key = layer.collection + '/' + layer.asset;
    if (seen.has(key)) continue;  // one table per asset, with all its bands
    seen.add(key);
    const table = document.createElement('table');
    table.className = 'inspect';
    table.dataset.collection = layer.collection;
    table.dataset.asset = layer.asset;
    const cap = document.createElement('caption');
    cap.textContent = layer.asset_title;
    table.appendChild(cap);
    const hr = document.createElement('tr');
    hr.innerHTML = '<th>period</th>';
    for (const b of layer.bands) {
      const th = document.createElement('th');
      th.textContent = b.name + (b.unit ? ` (${b.unit})` : '');
      hr.appendChild(th);
    }
    table.appendChild(hr);
    let any = false;
    for (const item of layer.items) {
      const tr = document.createElement('tr');
      tr.dataset.period = item.period;
      const td0 = document.createElement('td');
      td0.textContent = item.period;
      tr.appendChild(td0);
      let px = null;
      try {
        px = await readPixel(item.href, layer.bands, xy);
      } catch (err) {
        const td = document.createElement('td');
        td.colSpan = layer.bands.length;
        td.className = 'error';
        td.textContent = `cannot read ${item.href}: ${err}`;
        tr.appendChild(td);
        table.appendChild(tr);
        continue;
      }
      if (px === null) continue;
      any = true;
      tr.dataset.col = String(px.col);
      tr.dataset.row = String(px.row);
      px.values.forEach((v, b) => {
        const td = document.createElement('td');
        td.dataset.band = layer.bands[b].name;
        td.dataset.raw = String(v.raw);
        td.textContent = cellText(v, layer.classes);
        const c = layer.classes && layer.classes.find((k) => k.value === v.raw);
        if (c && c.description) td.title = c.description;
        tr.appendChild(td);
      });
      table.appendChild(tr);
    }
    if (any) panel.appendChild(table);
  }
  if (panel.querySelectorAll('table').length === 0) {
    const p = document.createElement('p');
    p.textContent = 'outside the published layers';
    panel.appendChild(p);
  }
  panel.dataset.done = String(Number(panel.dataset.done || 0) + 1);
}

map.on('singleclick', (event) => { inspect(event.coordinate); });

if (layers.length === 0) {
  showError('this catalog has no raster layers to map');
} else {
  initControls();
  update();
}

// for scripts and tests: inspect a map coordinate, read the state
window.ecocubeMap = {map, inspect, state, layers};
