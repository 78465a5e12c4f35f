// Calls to this server's API. The session cookie goes with every call (same origin); errors become an
// ApiError carrying the server's own message, whichever dialect's envelope it came in:
// OpenAI's {"error": {"message", "type", "code"}} or Ollama's {"error": "message"}.

export class ApiError extends Error {
  constructor(status, message, code = null) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.code = code;
  }
}

/** The message of an error body, or a sentence naming the status when there is none. */
export function messageOf(body, status) {
  if (body && typeof body === "object") {
    const error = body.error;
    if (error && typeof error === "object" && error.message) return { message: String(error.message), code: error.code ?? null };
    if (typeof error === "string" && error) return { message: error, code: null };
    if (typeof body.detail === "string") return { message: body.detail, code: null };
  }
  return { message: `the server answered ${status}`, code: null };
}

async function toError(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null;
  }
  const { message, code } = messageOf(body, response.status);
  if (response.status === 401) window.dispatchEvent(new CustomEvent("llmhost:unauthorized", { detail: message }));
  return new ApiError(response.status, message, code);
}

/** fetch() for the API: JSON in (`json`), the Response back; throws ApiError for any 4xx/5xx. */
export async function call(path, { method = "GET", json, body, signal, headers = {} } = {}) {
  const init = { method, signal, credentials: "same-origin", headers: { accept: "application/json", ...headers } };
  if (json !== undefined) {
    init.body = JSON.stringify(json);
    init.headers["content-type"] = "application/json";
  } else if (body !== undefined) {
    init.body = body;
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw new ApiError(0, `cannot reach the server (${error.message})`);
  }
  if (!response.ok) throw await toError(response);
  return response;
}

/** The JSON answer of a call (null for an empty body). */
export async function api(path, options = {}) {
  const response = await call(path, options);
  const text = await response.text();
  return text ? JSON.parse(text) : null;
}

/** Lines of a streamed body as they arrive (for NDJSON and SSE). */
async function* lines(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let end;
      while ((end = buffer.indexOf("\n")) >= 0) {
        const line = buffer.slice(0, end).replace(/\r$/, "");
        buffer = buffer.slice(end + 1);
        yield line;
      }
    }
    buffer += decoder.decode();
    if (buffer) yield buffer;
  } finally {
    reader.releaseLock();
  }
}

/** JSON objects of an NDJSON stream. */
export async function* ndjson(response) {
  for await (const line of lines(response)) {
    if (line.trim()) yield JSON.parse(line);
  }
}

/** The `data:` payloads of a server-sent-event stream, parsed as JSON, up to `[DONE]`. An error event
 * (OpenAI's mid-stream {"error": {...}}) is thrown as an ApiError. */
export async function* sse(response) {
  let data = [];
  for await (const line of lines(response)) {
    if (line === "") {
      if (data.length) {
        const text = data.join("\n");
        data = [];
        if (text === "[DONE]") return;
        const event = JSON.parse(text);
        if (event && event.error) {
          const { message, code } = messageOf(event, 500);
          throw new ApiError(500, message, code);
        }
        yield event;
      }
    } else if (line.startsWith("data:")) {
      data.push(line.slice(5).replace(/^ /, ""));
    }
  }
}

/**
 * Upload a form (multipart) with progress: XMLHttpRequest, because fetch() reports no upload progress.
 * `onProgress(loaded, total)`; resolves with the JSON answer, rejects with an ApiError.
 */
export function upload(path, form, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", path);
    xhr.withCredentials = true;
    xhr.setRequestHeader("accept", "application/json");
    xhr.upload.addEventListener("progress", (e) => {
      if (e.lengthComputable) onProgress(e.loaded, e.total);
    });
    xhr.addEventListener("load", () => {
      let body = null;
      try {
        body = xhr.responseText ? JSON.parse(xhr.responseText) : null;
      } catch {
        body = null;
      }
      if (xhr.status >= 200 && xhr.status < 300) {
        resolve(body);
        return;
      }
      const { message, code } = messageOf(body, xhr.status);
      if (xhr.status === 401) window.dispatchEvent(new CustomEvent("llmhost:unauthorized", { detail: message }));
      reject(new ApiError(xhr.status, message, code));
    });
    xhr.addEventListener("error", () => reject(new ApiError(0, "the upload failed: cannot reach the server")));
    xhr.addEventListener("abort", () => reject(new ApiError(0, "the upload was cancelled")));
    xhr.send(form);
  });
}

/** GET that answers null instead of throwing when the route does not exist here (404) or this key may
 * not use it (403): for optional parts of a page. Other errors still throw. */
export async function optional(path) {
  try {
    return await api(path);
  } catch (error) {
    if (error instanceof ApiError && (error.status === 404 || error.status === 403)) return null;
    throw error;
  }
}
