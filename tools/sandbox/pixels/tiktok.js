// A stand-in for TikTok's events.js: it replaces the ttq stub's methods,
// sets ttq.loaded and _ttp, runs the queued calls, and reports each
// tracked event to the sandbox.
(function (s) {
  var q = window.ttq;
  if (!q || q.loaded) return;
  if (!s.cookie('_ttp')) s.setCookie('_ttp', s.random() + s.random(), 390);
  var real = {
    track: function (event, props, opts) { s.hit('tiktok', event, opts && opts.event_id); }
  };
  (q.methods || []).forEach(function (m) { q[m] = real[m] || function () {}; });
  q.track = real.track;
  q.loaded = true;
  var queued = q.splice(0, q.length);
  for (var i = 0; i < queued.length; i++) {
    var call = queued[i];
    if (call && typeof q[call[0]] === 'function') q[call[0]].apply(q, call.slice(1));
  }
})(__pb_sandbox);
