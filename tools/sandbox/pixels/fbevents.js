// A stand-in for Meta's fbevents.js: it takes over the base code's fbq
// stub (callMethod, then the queued calls), sets _fbp and _fbc as the real
// pixel does, and reports each tracked event to the sandbox.
(function (s) {
  var f = window.fbq;
  if (!f || f.callMethod) return;
  if (!s.cookie('_fbp')) s.setCookie('_fbp', 'fb.1.' + Date.now() + '.' + s.random(), 90);
  var fbclid = s.param('fbclid');
  if (fbclid) s.setCookie('_fbc', 'fb.1.' + Date.now() + '.' + fbclid, 90);
  var pixels = [];
  f.callMethod = function () {
    var a = arguments;
    if (a[0] === 'init') pixels.push(String(a[1]));
    if (a[0] === 'track' || a[0] === 'trackCustom') {
      s.hit('meta', a[1], a[3] && a[3].eventID, {pixel_ids: pixels});
    }
    if (a[0] === 'trackSingle' || a[0] === 'trackSingleCustom') {
      s.hit('meta', a[2], a[4] && a[4].eventID, {pixel_ids: [String(a[1])]});
    }
  };
  var queued = f.queue || [];
  f.queue = [];
  for (var i = 0; i < queued.length; i++) f.callMethod.apply(f, queued[i]);
})(__pb_sandbox);
