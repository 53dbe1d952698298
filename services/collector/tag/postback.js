// postback browser tag, served by the collector at /v1/tag.js.
// What it does and why: docs/browser-tag.md. The collector strips the
// comment lines and indentation of this file and gzips it once at start.
//
// The page loads it with a queue stub, so calls made before it loads wait:
//   window.postback=window.postback||function(){(postback.q=postback.q||[]).push(arguments)};
//   postback('init', {collector: 'https://collect.example.com', site_key: 'pk_...'});
//   postback('track', 'Purchase', {event_id: 'order-1001', order: {...}});
// (with event_signature: '...' beside event_id where the site key wants it)
(function (w, d) {
  'use strict';
  var prev = w.postback;
  if (prev && prev.loaded) return;
  var PLATFORMS = ['meta', 'google_ads', 'tiktok'];
  // Each click id, the platform it belongs to and how long it is kept:
  // each platform's attribution window (Google 90 days, Meta and TikTok 7).
  var CLICKS = {gclid: 90, gbraid: 90, wbraid: 90, fbclid: 7, ttclid: 7};
  var DAY = 864e5;
  var OUTBOX = '_pb_outbox';
  var cfg = {wait_ms: 3000, platforms: null, cookie_domain: null, wait_for_consent: false};
  var plain = {};
  var tcf = null;
  var pending = {};
  var seen = {meta: {}, google_ads: {}, tiktok: {}};
  var queue = [];
  var timer = null;

  function own(o, k) { return Object.prototype.hasOwnProperty.call(o, k); }
  function each(o, f) { for (var k in o) if (own(o, k)) f(k, o[k]); }

  function cookie(name) {
    var m = d.cookie.match(new RegExp('(?:^|; )' + name + '=([^;]*)'));
    return m ? decodeURIComponent(m[1]) : null;
  }
  function setCookie(name, value, days) {
    d.cookie = name + '=' + encodeURIComponent(value) + '; path=/; max-age=' + Math.round(days * 86400) +
      '; SameSite=Lax' + (location.protocol === 'https:' ? '; Secure' : '') +
      (cfg.cookie_domain ? '; domain=' + cfg.cookie_domain : '');
  }

  // --- Consent: Google Consent Mode v2 from the dataLayer, IAB TCF v2
  // through __tcfapi, and postback('consent', ...) for any other CMP.
  // Later sources win: TCF, then Consent Mode in push order, then plain.
  var FLAGS = ['ad_storage', 'ad_user_data', 'ad_personalization', 'analytics_storage'];
  function consent() {
    var c = {};
    if (tcf && tcf.gdprApplies) {
      var p = (tcf.purpose && tcf.purpose.consents) || {};
      // Google's mapping of TCF purposes to Consent Mode.
      c.ad_storage = p[1] ? 'granted' : 'denied';
      c.ad_user_data = p[1] && p[7] ? 'granted' : 'denied';
      c.ad_personalization = p[3] && p[4] ? 'granted' : 'denied';
    }
    var dl = w.dataLayer || [];
    for (var i = 0; i < dl.length; i++) {
      var e = dl[i];
      // gtag() pushes its arguments object; regional defaults apply
      // elsewhere, so they are left out.
      if (e && e[0] === 'consent' && (e[1] === 'default' || e[1] === 'update') && e[2] && !e[2].region) {
        merge(c, e[2]);
      }
    }
    merge(c, plain);
    if (tcf && tcf.tcString) c.tcf = tcf.tcString;
    return c;
  }
  function merge(c, from) {
    FLAGS.forEach(function (f) {
      if (from[f] === 'granted' || from[f] === 'denied') c[f] = from[f];
    });
    if (typeof from.limited_data_use === 'boolean') c.limited_data_use = from.limited_data_use;
  }
  function listenTcf() {
    if (typeof w.__tcfapi !== 'function') return;
    try {
      w.__tcfapi('addEventListener', 2, function (data, ok) {
        if (ok && data && (data.eventStatus === 'tcloaded' || data.eventStatus === 'useractioncomplete')) {
          tcf = data;
          storeClicks();
        }
      });
    } catch (e) { /* a broken CMP must not break the page */ }
  }
  // Consent Mode updates arrive by dataLayer.push: watched, so click ids
  // held back for consent are stored the moment it is granted. gtag.js
  // replaces push with its own; the setter keeps that one under ours.
  function watchDataLayer() {
    var dl = w.dataLayer = w.dataLayer || [];
    var base = dl.push;
    var inner = base;
    var busy = false;
    // A library that keeps the push it found (ours) and calls it from its
    // own gets the plain one: no loop.
    var push = function () {
      if (busy) return base.apply(dl, arguments);
      busy = true;
      try { return inner.apply(dl, arguments); } finally { busy = false; storeClicks(); }
    };
    try {
      Object.defineProperty(dl, 'push', {
        configurable: true,
        get: function () { return push; },
        set: function (f) { inner = f; }
      });
    } catch (e) { /* frozen dataLayer: consent is still read at send time */ }
  }

  // --- Click ids: kept from the landing URL in first-party cookies, only
  // once ad_storage is not denied (or granted, with wait_for_consent).
  function captureClicks() {
    var q = location.search.slice(1).split('&');
    for (var i = 0; i < q.length; i++) {
      var kv = q[i].split('=');
      var k = kv[0];
      if (own(CLICKS, k) && kv[1]) {
        var v = '';
        try { v = decodeURIComponent(kv[1].replace(/\+/g, ' ')); } catch (e) { continue; }
        if (/^[\x21-\x7e]{1,512}$/.test(v)) pending[k] = v;
      }
    }
    storeClicks();
  }
  function storeClicks() {
    var storage = consent().ad_storage;
    if (storage === 'denied') {
      each(CLICKS, function (k) { if (cookie('_pb_' + k)) setCookie('_pb_' + k, '', 0); });
      return;
    }
    if (!storage && cfg.wait_for_consent) return;
    each(pending, function (k, v) {
      // Meta wants the click's time in fbc: fb.1.<ms>.<fbclid>.
      setCookie('_pb_' + k, k === 'fbclid' ? 'fb.1.' + Date.now() + '.' + v : v, CLICKS[k]);
    });
    pending = {};
  }
  function clickIds() {
    var ids = {};
    each(CLICKS, function (k) {
      var v = pending[k] || cookie('_pb_' + k);
      if (!v) return;
      if (k === 'fbclid') {
        ids.fbc = v.indexOf('fb.') === 0 ? v : 'fb.1.' + Date.now() + '.' + v;
        ids.fbclid = ids.fbc.split('.').slice(3).join('.');
      } else {
        ids[k] = v;
      }
    });
    var fbc = cookie('_fbc');
    if (fbc) ids.fbc = fbc;
    var fbp = cookie('_fbp');
    if (fbp) ids.fbp = fbp;
    var ttp = cookie('_ttp');
    if (ttp) ids.ttp = ttp;
    return ids;
  }

  // --- Pixels: is each platform's library on the page (loaded, not just
  // its snippet's stub, which an ad blocker leaves behind), and did the page
  // give it this conversion's event id? Calls are watched through a Proxy,
  // so the pixel keeps its own object and sees no difference.
  function note(platform, id) { if (id) seen[platform][String(id)] = true; }
  function metaCall(args) {
    var cmd = args[0];
    var opts = cmd === 'trackSingle' || cmd === 'trackSingleCustom' ? args[4] : args[3];
    if (/^track/.test(cmd) && opts) note('meta', opts.eventID);
  }
  function tiktokCall(args) {
    if (args[2]) note('tiktok', args[2].event_id);
  }
  function watchGlobal(name, wrap) {
    var cur = w[name];
    var wrapped = cur ? wrap(cur) : cur;
    try {
      Object.defineProperty(w, name, {
        configurable: true,
        get: function () { return wrapped; },
        set: function (v) { wrapped = v ? wrap(v) : v; }
      });
    } catch (e) { /* non-configurable: detection falls back to queues */ }
  }
  function wrapFbq(f) {
    if (f.__pb) return f;
    return new Proxy(f, {
      apply: function (t, self, args) { metaCall(args); return Reflect.apply(t, self, args); },
      get: function (t, k) { return k === '__pb' ? true : t[k]; }
    });
  }
  function wrapTtq(q) {
    if (q.__pb) return q;
    return new Proxy(q, {
      get: function (t, k) {
        if (k === '__pb') return true;
        var v = t[k];
        if (k !== 'track' || typeof v !== 'function') return v;
        return function () { tiktokCall(arguments); return v.apply(t, arguments); };
      }
    });
  }
  function gtagFired(id, orderId) {
    var dl = w.dataLayer || [];
    var ads = false;
    var direct = false;
    var untargeted = false;
    for (var i = 0; i < dl.length; i++) {
      var e = dl[i];
      if (!e) continue;
      if (e[0] === 'config' && /^AW-/.test(e[1])) ads = true;
      var tx = e[0] === 'event' && e[2] && e[2].transaction_id;
      if (tx == null || (String(tx) !== id && String(tx) !== orderId)) continue;
      var to = String(e[2].send_to || '');
      // Without send_to, gtag sends to every configured destination.
      if (!to) untargeted = true;
      else if (/(^|,)\s*AW-/.test(to)) direct = true;
    }
    return direct || (untargeted && ads);
  }
  // Calls made through the snippet's own variable skip the Proxy but sit
  // in its queue until the library loads: looked at too.
  function queued() {
    var f = w.fbq;
    ((f && f.queue) || []).forEach(function (a) { metaCall(a); });
    var q = w.ttq;
    if (q && q.length) {
      for (var i = 0; i < q.length; i++) if (q[i] && q[i][0] === 'track') tiktokCall(q[i].slice(1));
    }
  }
  var DETECT = {
    meta: {
      installed: function () { return typeof w.fbq === 'function'; },
      loaded: function () { return !!w.fbq && typeof w.fbq.callMethod === 'function'; },
      fired: function (id) { return !!seen.meta[id]; }
    },
    google_ads: {
      installed: function () { return typeof w.gtag === 'function' || !!w.google_tag_manager; },
      loaded: function () { return !!w.google_tag_manager; },
      fired: function (id, orderId) { return gtagFired(id, orderId); }
    },
    tiktok: {
      installed: function () { return !!w.ttq; },
      loaded: function () { return !!w.ttq && w.ttq.loaded === true; },
      fired: function (id) { return !!seen.tiktok[id]; }
    }
  };
  function pixels(id, orderId) {
    var out = {};
    queued();
    var list = cfg.platforms || PLATFORMS.filter(function (p) { return DETECT[p].installed(); });
    list.forEach(function (p) {
      var det = DETECT[p];
      if (!det) return;
      out[p] = det.installed() && det.loaded() && det.fired(id, orderId) ? 'fired' : 'not_fired';
    });
    return out;
  }

  // --- Sending: sendBeacon (text/plain: no CORS preflight), else fetch
  // with keepalive. What could not be sent waits in localStorage for the
  // next page; a beacon the browser took is sent as far as a page can know.
  function outbox(list) {
    try {
      if (list) localStorage.setItem(OUTBOX, JSON.stringify(list));
      else return JSON.parse(localStorage.getItem(OUTBOX) || '[]');
    } catch (e) { return []; }
  }
  function keep(item) {
    var list = outbox().filter(function (i) { return i.id !== item.id; });
    list.push(item);
    outbox(list.slice(-20));
  }
  function drop(item) {
    outbox(outbox().filter(function (i) { return i.id !== item.id; }));
  }
  function url() {
    return cfg.collector.replace(/\/+$/, '') + '/v1/collect?site_key=' + encodeURIComponent(cfg.site_key);
  }
  function transmit(item) {
    var body = JSON.stringify(item.event);
    try {
      if (navigator.sendBeacon && navigator.sendBeacon(url(), body)) return drop(item);
    } catch (e) { /* fall through to fetch */ }
    if (!w.fetch) return;
    w.fetch(url(), {method: 'POST', body: body, keepalive: true, credentials: 'omit',
      headers: {'Content-Type': 'text/plain'}})
      .then(function (r) {
        // 429 and 5xx are worth another try; any other answer is final.
        if (r.status !== 429 && r.status < 500) drop(item);
      }, function () { /* kept: the next page retries */ });
  }
  function flush() {
    clearTimeout(timer);
    timer = null;
    var ready = queue;
    queue = [];
    ready.forEach(function (t) {
      var item = {id: t.opts.event_id + '|' + t.name, at: Date.now(), event: build(t)};
      keep(item);
      transmit(item);
    });
  }
  function build(t) {
    var o = t.opts;
    var e = {event_id: String(o.event_id), event_name: t.name, event_time: t.time, action_source: 'website'};
    ['order', 'user'].forEach(function (k) { if (o[k]) e[k] = o[k]; });
    // Given by the shop's server with the event id when its site key
    // requires signed ids (docs/collector.md#signed-event-ids).
    if (o.event_signature) e.event_signature = String(o.event_signature);
    var ids = clickIds();
    for (var k in ids) { e.click_ids = ids; break; }
    var page = {};
    if (/^https?:\/\//.test(location.href)) page.url = location.href;
    if (/^https?:\/\/.{3,}/.test(d.referrer)) page.referrer = d.referrer;
    if (page.url) e.page = page;
    var c = consent();
    for (var f in c) { e.consent = c; break; }
    var orderId = o.order && o.order.order_id;
    e.pixels = pixels(e.event_id, orderId && String(orderId));
    each(t.pixels, function (p, s) { e.pixels[p] = s; });
    return e;
  }
  // Pixel libraries load asynchronously, so a conversion waits for the
  // page's load event and a beat more (at most wait_ms), and goes at once
  // when the page is being left.
  function schedule() {
    if (timer) return;
    var soon = function () { timer = setTimeout(flush, 300); };
    if (d.readyState === 'complete') soon();
    else w.addEventListener('load', function () { clearTimeout(timer); soon(); });
    timer = setTimeout(flush, cfg.wait_ms);
  }
  function retry() {
    var old = Date.now() - 7 * DAY;
    outbox().forEach(function (i) { if (i.at < old) drop(i); else transmit(i); });
  }

  var commands = {
    init: function (o) {
      each(o || {}, function (k, v) { cfg[k] = v; });
      if (!cfg.collector || !cfg.site_key) throw new Error('postback: init needs collector and site_key');
      captureClicks();
      retry();
    },
    consent: function (o) { merge(plain, o || {}); storeClicks(); },
    pixel: function (platform, state) { plainPixels[platform] = state; },
    track: function (name, o) {
      if (!cfg.collector) throw new Error('postback: call init first');
      if (!o || o.event_id === undefined || o.event_id === null || o.event_id === '') {
        throw new Error('postback: track needs opts.event_id (the id given to the pixels)');
      }
      queue.push({name: name, opts: o, time: Math.floor(Date.now() / 1000), pixels: plainPixels});
      plainPixels = {};
      schedule();
    },
    flush: function () { flush(); }
  };
  var plainPixels = {};

  // A mistake in a call is reported on the console, never thrown into the
  // page's own code.
  function postback() {
    try {
      var f = commands[arguments[0]];
      if (!f) throw new Error('postback: unknown command ' + arguments[0]);
      return f.apply(null, Array.prototype.slice.call(arguments, 1));
    } catch (e) {
      if (w.console) console.error(e);
    }
  }
  postback.loaded = true;
  postback.version = 1;

  watchGlobal('fbq', wrapFbq);
  watchGlobal('ttq', wrapTtq);
  watchDataLayer();
  listenTcf();
  w.addEventListener('pagehide', function () { if (queue.length) flush(); });
  d.addEventListener('visibilitychange', function () {
    if (d.visibilityState === 'hidden' && queue.length) flush();
  });

  var early = (prev && prev.q) || [];
  w.postback = postback;
  for (var i = 0; i < early.length; i++) postback.apply(null, early[i]);
})(window, document);
