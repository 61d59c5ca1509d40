// The support Mini App (docs/support.md): shows a request and posts an admin's answer.
// initData comes from Telegram's WebApp script when it is loaded, else from the URL fragment
// (tgWebAppData), read here the way Telegram's script reads it.
(function () {
  "use strict";

  var TEXTS = JSON.parse(document.getElementById("texts").textContent);
  var webApp = window.Telegram && window.Telegram.WebApp ? window.Telegram.WebApp : null;

  function fragmentInitData() {
    var hash = window.location.hash.replace(/^#/, "");
    return hash ? new URLSearchParams(hash).get("tgWebAppData") || "" : "";
  }

  var initData = (webApp && webApp.initData) || fragmentInitData();
  var fields = new URLSearchParams(initData);
  var user = {};
  try { user = JSON.parse(fields.get("user") || "{}"); } catch (e) { user = {}; }
  var code = String(user.language_code || "").slice(0, 2).toLowerCase();
  var texts = TEXTS[code] || TEXTS.en;

  function threadId() {
    var start = fields.get("start_param") || (webApp && webApp.initDataUnsafe && webApp.initDataUnsafe.start_param) || "";
    var match = /^t(\d+)$/.exec(start);
    if (match) { return match[1]; }
    var given = new URLSearchParams(window.location.search).get("thread") || "";
    return /^\d+$/.test(given) ? given : null;
  }

  function byId(id) { return document.getElementById(id); }
  function show(id, visible) { byId(id).hidden = !visible; }
  function setState(state) { document.body.setAttribute("data-state", state); }

  function fail(message) {
    var error = byId("error");
    error.textContent = texts.error.replace("{message}", message);
    show("error", true);
    show("loading", false);
    setState("error");
  }

  function describe(response, body) {
    if (body && body.error && body.error.message) { return body.error.message; }
    return "HTTP " + response.status;
  }

  function call(method, path, payload) {
    var options = { method: method, headers: { "Authorization": "tma " + initData } };
    if (payload !== undefined) {
      options.headers["Content-Type"] = "application/json";
      options.body = JSON.stringify(payload);
    }
    return fetch(path, options).then(function (response) {
      return response.json().catch(function () { return null; }).then(function (body) {
        return { response: response, body: body };
      });
    });
  }

  function render(request) {
    byId("request-from").textContent = [request.name, request.email].filter(Boolean).join(" · ");
    byId("request-text").textContent = request.text || "";
    var status = byId("request-status");
    status.textContent = texts["status." + request.status] || request.status;
    status.setAttribute("data-status", request.status);
    show("request", true);
    show("loading", false);
    var answerable = request.status === "open" || request.status === "failed";
    show("reply-form", answerable);
    setState(answerable ? "ready" : "closed");
  }

  function submit(thread, event) {
    event.preventDefault();
    var text = byId("reply-text").value;
    if (!text.trim()) { return; }
    byId("reply-submit").disabled = true;
    show("error", false);
    call("POST", "api/replies", { thread: Number(thread), text: text }).then(function (result) {
      if (result.response.status === 202) {
        show("reply-form", false);
        byId("sent").textContent = texts.sent;
        show("sent", true);
        var status = byId("request-status");
        status.textContent = texts["status.replying"];
        status.setAttribute("data-status", "replying");
        setState("sent");
        if (webApp && typeof webApp.close === "function") { webApp.close(); }
        return;
      }
      byId("reply-submit").disabled = false;
      fail(describe(result.response, result.body));
    }, function (error) {
      byId("reply-submit").disabled = false;
      fail(String(error));
    });
  }

  function start() {
    document.documentElement.lang = TEXTS[code] ? code : "en";
    document.title = texts.title;
    byId("title").textContent = texts.title;
    byId("loading").textContent = texts.loading;
    byId("request-from-label").textContent = texts.from;
    byId("request-status-label").textContent = texts.status;
    byId("reply-label").textContent = texts.answer;
    byId("reply-submit").textContent = texts.send;
    if (webApp) {
      if (typeof webApp.ready === "function") { webApp.ready(); }
      if (typeof webApp.expand === "function") { webApp.expand(); }
    }
    if (!initData) { fail(texts.no_init_data); return; }
    var thread = threadId();
    if (!thread) { fail(texts.no_thread); return; }
    byId("reply-form").addEventListener("submit", function (event) { submit(thread, event); });
    call("GET", "api/requests/" + thread).then(function (result) {
      if (result.response.status === 200) { render(result.body); return; }
      fail(describe(result.response, result.body));
    }, function (error) { fail(String(error)); });
  }

  start();
}());
