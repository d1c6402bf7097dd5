// Baton's pages, made live. The pages read completely without this file;
// it converts times to the reader's time zone, follows server-sent events
// (/api/v1/events) to change states without a reload, streams a running
// task's console output (/api/v1/tasks/ID/log?follow=1), and sends rerun and
// abort requests, with the token kept in this tab's sessionStorage when the
// dispatcher has a token file.
"use strict";

const ICONS = { pending: "◷", running: "▶", passed: "✓", failed: "✗", error: "!", aborted: "■" };
const FINAL = ["passed", "failed", "error", "aborted"];

function localTimes(root) {
  for (const el of root.querySelectorAll("time[datetime]")) {
    const date = new Date(el.getAttribute("datetime"));
    if (!isNaN(date)) {
      el.textContent = date.toLocaleString();
      el.title = el.getAttribute("datetime");
    }
  }
}

function badge(state) {
  const outer = document.createElement("span");
  outer.className = "state state-" + state;
  outer.dataset.state = state;
  const icon = document.createElement("span");
  icon.className = "icon";
  icon.setAttribute("aria-hidden", "true");
  icon.textContent = ICONS[state] || "•";
  const word = document.createElement("span");
  word.className = "word";
  word.textContent = state;
  outer.append(icon, " ", word);
  return outer;
}

async function fetchPage(url) {
  const response = await fetch(url, { headers: { Accept: "text/html" } });
  if (!response.ok) return null;
  return new DOMParser().parseFromString(await response.text(), "text/html");
}

// Re-renders sections of this page from the server, at most once a second.
let refreshTimer = null;
function scheduleRefresh(selectors) {
  if (refreshTimer) return;
  refreshTimer = setTimeout(async () => {
    refreshTimer = null;
    const fresh = await fetchPage(location.href);
    if (!fresh) return;
    for (const selector of selectors) {
      const now = document.querySelector(selector);
      const next = fresh.querySelector(selector);
      if (now && next) {
        now.replaceWith(next);
        localTimes(next);
      }
    }
    wireSteering();
  }, 1000);
}

function onTaskChange(change) {
  for (const el of document.querySelectorAll('.js-state[data-task-id="' + change.id + '"], tr[data-task-id="' + change.id + '"] .js-state')) {
    el.replaceChildren(badge(change.state));
  }
  const log = document.getElementById("log");
  if (log) {
    if (String(change.id) === log.dataset.taskId) scheduleRefresh(["#details", ".steer"]);
  } else {
    scheduleRefresh(["#main"]);
  }
}

function subscribe() {
  if (!window.EventSource) return;
  const status = document.getElementById("live-status");
  const events = new EventSource("/api/v1/events");
  events.addEventListener("ready", () => { if (status) status.textContent = "● live"; });
  events.addEventListener("task", (event) => onTaskChange(JSON.parse(event.data)));
  events.addEventListener("release", () => { if (location.pathname === "/releases") scheduleRefresh(["#main"]); });
  events.addEventListener("deployment", () => { if (location.pathname === "/releases") scheduleRefresh(["#main"]); });
  events.addEventListener("runner_lost", () => { if (!document.getElementById("log")) scheduleRefresh(["#main"]); });
  events.addEventListener("lagged", () => scheduleRefresh(document.getElementById("log") ? ["#details", ".steer"] : ["#main"]));
  events.onerror = () => { if (status) status.textContent = "○ reconnecting"; };
}

// ANSI escape sequences are shown as colour once the task ends (the server
// renders them); while it runs, they are left out of the growing text.
const ANSI = /\x1b\[[0-9;?]*[ -\/]*[@-~]/g;

async function followLog() {
  const log = document.getElementById("log");
  if (!log || log.dataset.final === "true") return;
  let skip = Number(log.dataset.offset || 0);
  const response = await fetch("/api/v1/tasks/" + log.dataset.taskId + "/log?follow=1");
  if (!response.ok || !response.body) return;
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let carry = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    let bytes = value;
    if (skip > 0) {
      const dropped = Math.min(skip, bytes.length);
      skip -= dropped;
      bytes = bytes.subarray(dropped);
    }
    if (bytes.length === 0) continue;
    let text = carry + decoder.decode(bytes, { stream: true });
    // Keep an escape sequence cut by the chunk boundary for the next chunk.
    const cut = text.lastIndexOf("\x1b");
    if (cut >= 0 && !/\x1b\[[0-9;?]*[ -\/]*[@-~]/.test(text.slice(cut))) {
      carry = text.slice(cut);
      text = text.slice(0, cut);
    } else {
      carry = "";
    }
    log.append(document.createTextNode(text.replace(ANSI, "")));
  }
  log.dataset.final = "true";
  const html = await fetch("/tasks/" + log.dataset.taskId + "/log.html");
  if (html.ok) log.innerHTML = await html.text();
}

const TOKEN_KEY = "baton-token";

function wireSteering() {
  const steer = document.querySelector(".steer");
  if (!steer) return;
  const needsToken = steer.dataset.needsToken === "true";
  const tokenForm = document.getElementById("token-form");
  if (needsToken && tokenForm && !sessionStorage.getItem(TOKEN_KEY)) tokenForm.hidden = false;
  if (tokenForm) {
    tokenForm.onsubmit = (event) => {
      event.preventDefault();
      const token = document.getElementById("token").value.trim();
      if (token) {
        sessionStorage.setItem(TOKEN_KEY, token);
        tokenForm.hidden = true;
      }
    };
  }
  for (const button of steer.querySelectorAll(".js-steer")) {
    button.form.onsubmit = async (event) => {
      event.preventDefault();
      const result = document.getElementById("steer-result");
      const headers = {};
      const token = sessionStorage.getItem(TOKEN_KEY);
      if (needsToken && !token) {
        if (tokenForm) tokenForm.hidden = false;
        result.textContent = "Enter the dispatcher's token first.";
        return;
      }
      if (token) headers["Authorization"] = "Bearer " + token;
      const response = await fetch(button.form.action, { method: "POST", headers });
      const body = await response.json().catch(() => ({}));
      if (response.status === 401) {
        sessionStorage.removeItem(TOKEN_KEY);
        if (tokenForm) tokenForm.hidden = false;
      }
      if (!response.ok) {
        result.textContent = body.error || ("failed: HTTP " + response.status);
        return;
      }
      result.replaceChildren();
      if (body.id !== undefined && button.id === "rerun") {
        const link = document.createElement("a");
        link.id = "new-task";
        link.href = "/tasks/" + body.id;
        link.textContent = "task #" + body.id;
        result.append("Queued ", link);
      } else {
        result.textContent = button.dataset.done || "Abort requested.";
      }
    };
  }
}

document.addEventListener("DOMContentLoaded", () => {
  localTimes(document);
  wireSteering();
  subscribe();
  followLog();
});
