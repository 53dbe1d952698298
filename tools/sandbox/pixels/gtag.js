// A stand-in for Google's gtag.js: google_tag_manager appears, the
// dataLayer is processed (what is in it, then every push), and each
// conversion event for an AW- destination is reported to the sandbox.
(function (s) {
  var gtm = window.google_tag_manager = window.google_tag_manager || {};
  var dl = window.dataLayer = window.dataLayer || [];
  if (gtm.__pb_standin) return;
  gtm.__pb_standin = true;
  var ads = [];
  function process(e) {
    if (!e || typeof e.length !== 'number') return;
    if (e[0] === 'config' && /^AW-/.test(e[1])) { ads.push(e[1]); gtm[e[1]] = {}; }
    if (e[0] === 'event' && e[2]) {
      var to = String(e[2].send_to || '');
      if (/AW-/.test(to) || (!to && ads.length)) {
        s.hit('google_ads', e[1], e[2].transaction_id, {send_to: to || ads.join(',')});
      }
    }
  }
  for (var i = 0; i < dl.length; i++) process(dl[i]);
  var push = dl.push;
  dl.push = function () {
    var r = push.apply(dl, arguments);
    for (var j = 0; j < arguments.length; j++) process(arguments[j]);
    return r;
  };
})(__pb_sandbox);
