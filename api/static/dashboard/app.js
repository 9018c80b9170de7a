// Entry point: sign-in, and the hash router between the execution list and one execution.
//
// Routes: #/executions?status=&dag_id=&since= lists executions, and
// #/executions/<execution id>?node=<node id> shows one, with a node selected.

import { forgetToken, getJson, storeToken, storedToken } from "./api.js";
import { el, replaceChildren } from "./dom.js";
import { ExecutionView } from "./execution.js";
import { ListView } from "./list.js";
import { clearError, showError } from "./ui.js";

const view = document.getElementById("view");
const nav = document.getElementById("nav");
let current = null;

function parseRoute() {
  const hash = window.location.hash.replace(/^#/, "") || "/executions";
  const [path, queryText = ""] = hash.split("?", 2);
  const query = new URLSearchParams(queryText);
  const match = /^\/executions\/([^/]+)$/.exec(path);
  if (match) {
    return { name: "execution", executionId: decodeURIComponent(match[1]), nodeId: query.get("node") };
  }
  return {
    name: "list",
    filters: { status: query.get("status") || "", dag_id: query.get("dag_id") || "", since: query.get("since") || "" },
  };
}

function route() {
  if (storedToken() === null) {
    showLogin();
    return;
  }
  nav.hidden = false;
  const next = parseRoute();

  // A new ?node= on the page already open only changes the selection.
  if (next.name === "execution" && current instanceof ExecutionView && current.executionId === next.executionId) {
    current.selectNode(next.nodeId, { center: true });
    return;
  }
  current?.stop();
  clearError();
  if (next.name === "execution") {
    document.title = `Execution ${next.executionId} — gl-orchestrator`;
    current = new ExecutionView(view, next.executionId, next.nodeId);
  } else {
    document.title = "Executions — gl-orchestrator";
    current = new ListView(view, next.filters);
  }
}

function showLogin(message = "") {
  current?.stop();
  current = null;
  nav.hidden = true;
  document.title = "Sign in — gl-orchestrator";

  const token = el("input", { type: "password", id: "login-token", name: "token", autocomplete: "off",
                              required: true, spellcheck: "false" });
  const error = el("p", { class: "login-message", id: "login-error", role: "alert", hidden: !message }, message);
  const submit = el("button", { type: "submit", class: "primary", id: "login-submit" }, "Sign in");
  const form = el("form", { class: "login", id: "login-form" },
    el("h1", {}, "Sign in"),
    el("p", {}, "Paste an API bearer token (one of GL_ORCHESTRATOR_API_TOKENS). "
      + "It is kept in this browser tab only, and sent with every API request."),
    el("label", {}, "API token", token),
    submit,
    error);

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const candidate = token.value.trim();
    submit.disabled = true;
    error.hidden = true;
    try {
      // Any authenticated read checks the token, and a page of one execution is cheap.
      await getJson("/executions", { query: { limit: 1 }, token: candidate });
    } catch (exc) {
      error.textContent = exc.status === 401
        ? "The API rejected this token (401 unauthorized). Check it and try again."
        : `Signing in failed: ${exc.code}: ${exc.message}`;
      error.hidden = false;
      submit.disabled = false;
      return;
    }
    storeToken(candidate);
    route();
  });

  clearError();
  replaceChildren(view, form);
  token.focus();
}

document.getElementById("sign-out").addEventListener("click", () => {
  forgetToken();
  showLogin("Signed out.");
});

window.addEventListener("gl-unauthorized", (event) => {
  forgetToken();
  showLogin(`The API rejected the stored token: ${event.detail.message}. Sign in again.`);
});

window.addEventListener("hashchange", route);
window.addEventListener("unhandledrejection", (event) => {
  showError(event.reason instanceof Error ? event.reason : new Error(String(event.reason)), "unexpected error");
});
route();
