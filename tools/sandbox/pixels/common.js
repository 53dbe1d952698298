// Shared by the three stand-in pixels (prepended to each when served):
// where the sandbox is, a hit to it, and the pixels' first-party cookies.
var __pb_sandbox = (function () {
  var s = document.currentScript;
  var origin = s ? new URL(s.src).origin : '';
  function cookie(name) {
    var m = document.cookie.match(new RegExp('(?:^|; )' + name + '=([^;]*)'));
    return m ? decodeURIComponent(m[1]) : null;
  }
  return {
    hit: function (platform, eventName, eventId, extra) {
      var body = {platform: platform, event_name: String(eventName || ''), event_id: eventId == null ? null : String(eventId), page: location.href};
      for (var k in extra || {}) body[k] = extra[k];
      navigator.sendBeacon(origin + '/pixel/hit', JSON.stringify(body));
    },
    cookie: cookie,
    setCookie: function (name, value, days) {
      document.cookie = name + '=' + encodeURIComponent(value) + '; path=/; max-age=' + days * 86400 + '; SameSite=Lax';
    },
    param: function (name) {
      return new URLSearchParams(location.search).get(name);
    },
    random: function () { return String(Math.floor(Math.random() * 1e10)); }
  };
})();
