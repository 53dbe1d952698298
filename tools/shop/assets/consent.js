// The shop's consent banner, as three kinds of CMP (the shop's ?cmp=):
// consent_mode sets Google Consent Mode v2 (default denied, then the
// choice), tcf answers __tcfapi like an IAB TCF v2 CMP, plain calls
// postback('consent', ...). The choice is kept in the shop_consent cookie.
// The pixels load after it: gtag always (Consent Mode), Meta and TikTok
// only once consent is granted, as a CMP's blocking rules would do.
(function () {
  var cfg = JSON.parse(document.getElementById('shop-config').textContent);
  window.dataLayer = window.dataLayer || [];
  window.gtag = window.gtag || function () { window.dataLayer.push(arguments); };
  window.postback = window.postback || function () { (window.postback.q = window.postback.q || []).push(arguments); };
  function cookie(name) {
    var m = document.cookie.match(new RegExp('(?:^|; )' + name + '=([^;]*)'));
    return m ? m[1] : null;
  }
  var FLAGS = ['ad_storage', 'ad_user_data', 'ad_personalization', 'analytics_storage'];
  function flags(state) {
    var o = {};
    FLAGS.forEach(function (f) { o[f] = state; });
    return o;
  }
  var listeners = [];
  var choice = cookie('shop_consent');
  function tcData(status) {
    var yes = choice === 'granted';
    return {
      tcString: yes ? 'CQJpostbackDemoAAAAAAENBQFgAP_AAH_AAAAAIxQAQAAAAAAA' : 'CQJpostbackDemoAAAAAAENBQFgAAAAAAAAAAAAIxQAQAAAAAAA',
      gdprApplies: true,
      eventStatus: status,
      cmpStatus: 'loaded',
      purpose: {consents: {1: yes, 2: yes, 3: yes, 4: yes, 7: yes}}
    };
  }
  if (cfg.cmp === 'consent_mode') gtag('consent', 'default', flags('denied'));
  if (cfg.cmp === 'tcf') {
    window.__tcfapi = function (command, version, callback) {
      if (command === 'addEventListener') {
        listeners.push(callback);
        if (choice) callback(tcData('tcloaded'), true);
      } else if (command === 'ping') {
        callback({gdprApplies: true, cmpLoaded: true, cmpStatus: 'loaded'}, true);
      }
    };
  }
  function apply(status) {
    if (!choice) return;
    if (cfg.cmp === 'consent_mode') gtag('consent', 'update', flags(choice));
    if (cfg.cmp === 'plain') postback('consent', flags(choice));
    if (cfg.cmp === 'tcf') listeners.forEach(function (l) { l(tcData(status), true); });
  }
  apply('tcloaded');

  var loaded = {};
  function load(name, fn) {
    if (loaded[name]) return;
    loaded[name] = true;
    fn();
  }
  function gtagPixel() {
    var s = document.createElement('script');
    s.async = true;
    s.src = cfg.pixels_url + '/gtag/js?id=' + cfg.google_ads_id;
    document.head.appendChild(s);
    gtag('js', new Date());
    gtag('config', cfg.google_ads_id);
  }
  // Meta's base code, with the sandbox's host for connect.facebook.net.
  function metaPixel() {
    !function (f, b, e, v, n, t, s) {
      if (f.fbq) return; n = f.fbq = function () { n.callMethod ? n.callMethod.apply(n, arguments) : n.queue.push(arguments); };
      if (!f._fbq) f._fbq = n; n.push = n; n.loaded = !0; n.version = '2.0'; n.queue = []; t = b.createElement(e); t.async = !0;
      t.src = v; s = b.getElementsByTagName(e)[0]; s.parentNode.insertBefore(t, s);
    }(window, document, 'script', cfg.pixels_url + '/en_US/fbevents.js');
    fbq('init', cfg.meta_pixel_id);
    fbq('track', 'PageView');
  }
  // TikTok's base code, with the sandbox's host for analytics.tiktok.com.
  function tiktokPixel() {
    !function (w, d, t) {
      w.TiktokAnalyticsObject = t; var ttq = w[t] = w[t] || [];
      ttq.methods = ['page', 'track', 'identify', 'instances', 'debug', 'on', 'off', 'once', 'ready', 'alias', 'group', 'enableCookie', 'disableCookie'];
      ttq.setAndDefer = function (t, e) { t[e] = function () { t.push([e].concat(Array.prototype.slice.call(arguments, 0))); }; };
      for (var i = 0; i < ttq.methods.length; i++) ttq.setAndDefer(ttq, ttq.methods[i]);
      ttq.load = function (e) {
        var i = cfg.pixels_url + '/i18n/pixel/events.js';
        ttq._i = ttq._i || {}; ttq._i[e] = []; ttq._i[e]._u = i; ttq._t = ttq._t || {}; ttq._t[e] = +new Date;
        var o = d.createElement('script'); o.type = 'text/javascript'; o.async = !0; o.src = i + '?sdkid=' + e + '&lib=' + t;
        var a = d.getElementsByTagName('script')[0]; a.parentNode.insertBefore(o, a);
      };
      ttq.load(cfg.tiktok_pixel_id);
      ttq.page();
    }(window, document, 'ttq');
  }
  function pixels() {
    load('google_ads', gtagPixel);
    if (choice === 'granted') {
      load('meta', metaPixel);
      load('tiktok', tiktokPixel);
    }
  }
  window.shopConsent = {
    choose: function (state) {
      choice = state;
      document.cookie = 'shop_consent=' + state + '; path=/; max-age=31536000; SameSite=Lax';
      apply('useractioncomplete');
      pixels();
      var b = document.getElementById('consent-banner');
      if (b) b.hidden = true;
    },
    choice: function () { return choice; }
  };
  document.addEventListener('DOMContentLoaded', function () {
    var b = document.getElementById('consent-banner');
    if (b) b.hidden = !!choice;
    document.querySelectorAll('[data-consent]').forEach(function (el) {
      el.addEventListener('click', function () { window.shopConsent.choose(el.getAttribute('data-consent')); });
    });
  });
  // The pixels' script tags are written during parsing, before the page's
  // own scripts run: the base code's stubs are there when they fire.
  pixels();
})();
