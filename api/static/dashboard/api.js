// Calls to the REST API with the operator's bearer token.
//
// The token lives in sessionStorage: it survives a reload of the tab, and is
// gone when the tab closes. It is sent only in the Authorization header of
// requests to the API base that the page was rendered with.

const TOKEN_KEY = "gl-orchestrator.token";

export const API_BASE = document.querySelector('meta[name="gl-api-base"]').content;

export class ApiError extends Error {
  // An error of the API's {"error": {"code", "message", "details"}} shape,
  // or one built the same way for a network failure or a body of another shape.
  constructor(status, code, message, details = null, requestId = null) {
    super(message);
    this.status = status;
    this.code = code;
    this.details = details;
    this.requestId = requestId;
  }
}

export function storedToken() {
  return sessionStorage.getItem(TOKEN_KEY);
}

export function storeToken(token) {
  sessionStorage.setItem(TOKEN_KEY, token);
}

export function forgetToken() {
  sessionStorage.removeItem(TOKEN_KEY);
}

function urlOf(path, query) {
  const url = new URL(API_BASE + path, window.location.origin);
  for (const [name, value] of Object.entries(query || {})) {
    if (value !== undefined && value !== null && value !== "") {
      url.searchParams.set(name, value);
    }
  }
  return url;
}

async function errorOf(response) {
  const requestId = response.headers.get("X-Request-ID");
  let body = null;
  try {
    body = await response.json();
  } catch {
    // A proxy in front of the API may respond with HTML, and then only the status shows what failed.
  }
  const error = body && typeof body === "object" ? body.error : null;
  if (error && typeof error.code === "string" && typeof error.message === "string") {
    return new ApiError(response.status, error.code, error.message, error.details ?? null, requestId);
  }
  return new ApiError(
    response.status, `http_${response.status}`,
    `the API answered ${response.status} ${response.statusText} without an error body`, null, requestId,
  );
}

// Send one request and return the Response; raise ApiError for a status of 400 or more.
// `token` replaces the stored token, for the sign-in check.
export async function send(method, path, { query, body, token } = {}) {
  const headers = { Accept: "application/json" };
  const bearer = token ?? storedToken();
  if (bearer) {
    headers.Authorization = `Bearer ${bearer}`;
  }
  const init = { method, headers, cache: "no-store", credentials: "omit" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }

  const url = urlOf(path, query);
  let response;
  try {
    response = await fetch(url, init);
  } catch (exc) {
    throw new ApiError(0, "network_error", `could not reach the API at ${url.pathname}: ${exc.message}`);
  }
  if (!response.ok) {
    throw await errorOf(response);
  }
  return response;
}

export async function getJson(path, options = {}) {
  const response = await send("GET", path, options);
  return response.json();
}

export async function postJson(path, body = {}) {
  const response = await send("POST", path, { body });
  return { status: response.status, body: await response.json() };
}

export function executionPath(executionId, suffix = "") {
  return `/executions/${encodeURIComponent(executionId)}${suffix}`;
}

// Fetch a response with the token and hand it to the browser as a file download.
export async function download(path, fallbackName) {
  const response = await send("GET", path);
  const disposition = response.headers.get("Content-Disposition") || "";
  const match = /filename="([^"]+)"/.exec(disposition);
  const name = match ? match[1] : fallbackName;
  const url = URL.createObjectURL(await response.blob());
  const link = document.createElement("a");
  link.href = url;
  link.download = name;
  document.body.append(link);
  link.click();
  link.remove();
  // The browser has read the blob once the click is handled; a short delay covers slow starts.
  setTimeout(() => URL.revokeObjectURL(url), 10000);
  return name;
}
