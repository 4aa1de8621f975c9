/* The dashboard's API client: the same /v1 endpoints and Bearer key any OpenAI client uses. */
"use strict";

(function () {
  const KEY_STORAGE = "tuna.apiKey";

  class ApiError extends Error {
    constructor(message, status, body) {
      super(message);
      this.status = status;
      this.body = body;
    }
  }

  function getKey() {
    return localStorage.getItem(KEY_STORAGE);
  }

  function setKey(key) {
    if (key) localStorage.setItem(KEY_STORAGE, key);
    else localStorage.removeItem(KEY_STORAGE);
  }

  function headers(extra, key) {
    const h = Object.assign({ Accept: "application/json" }, extra || {});
    const k = key || getKey();
    if (k) h.Authorization = "Bearer " + k;
    return h;
  }

  // The server's `{"error": {"message"}}` envelope, or something readable for anything else.
  function errorFrom(status, text) {
    let body = null;
    try {
      body = JSON.parse(text);
    } catch (e) {
      /* not JSON */
    }
    const message =
      (body && body.error && body.error.message) ||
      (text ? "HTTP " + status + ": " + text.slice(0, 300) : "HTTP " + status);
    return new ApiError(message, status, body);
  }

  async function request(method, path, options) {
    options = options || {};
    const init = { method: method, headers: headers(options.headers, options.key) };
    if (options.json !== undefined) {
      init.body = JSON.stringify(options.json);
      init.headers["Content-Type"] = "application/json";
    }
    let response;
    try {
      response = await fetch(path, init);
    } catch (e) {
      throw new ApiError("Cannot reach the server: " + e.message, 0, null);
    }
    const text = await response.text();
    if (!response.ok) {
      const error = errorFrom(response.status, text);
      if (response.status === 401 && !options.key) window.dispatchEvent(new Event("tuna:unauthorized"));
      throw error;
    }
    return text ? JSON.parse(text) : null;
  }

  function query(params) {
    const q = new URLSearchParams();
    Object.keys(params || {}).forEach(function (k) {
      if (params[k] !== undefined && params[k] !== null) q.set(k, params[k]);
    });
    const s = q.toString();
    return s ? "?" + s : "";
  }

  const api = {
    ApiError: ApiError,
    getKey: getKey,
    setKey: setKey,
    get: function (path, params) {
      return request("GET", path + query(params));
    },
    post: function (path, json) {
      return request("POST", path, { json: json === undefined ? {} : json });
    },
    del: function (path) {
      return request("DELETE", path);
    },
    /** Check a key before keeping it: any authenticated read will do. */
    verifyKey: function (key) {
      return request("GET", "/v1/models", { key: key });
    },

    /**
     * Events of a job not in `seen` (a Set of ids), oldest first. Pages come newest first, so
     * paging stops at the first event already seen; the first call reads the whole history.
     */
    newEvents: async function (jobId, seen) {
      const fresh = [];
      let after = null;
      for (;;) {
        const page = await api.get("/v1/fine_tuning/jobs/" + encodeURIComponent(jobId) + "/events", {
          limit: 100,
          after: after,
        });
        for (const event of page.data) {
          if (seen.has(event.id)) return fresh.reverse();
          fresh.push(event);
        }
        if (!page.has_more || page.data.length === 0) return fresh.reverse();
        after = page.data[page.data.length - 1].id;
      }
    },

    /**
     * Download a model (GET /v1/models/{id}/content): while a worker builds the export the
     * server answers 202 with its status (`onStatus` gets it; asked again after Retry-After);
     * then the file is saved under the server's name. The browser holds it in memory first
     * (a link cannot carry the API key): for very large models, use `tuna models download`.
     */
    downloadModel: async function (model, params, onStatus) {
      const path = "/v1/models/" + model + "/content" + query(params);
      for (;;) {
        let response;
        try {
          response = await fetch(path, { headers: headers({ Accept: "*/*" }) });
        } catch (e) {
          throw new ApiError("Cannot reach the server: " + e.message, 0, null);
        }
        if (response.status === 202) {
          const body = await response.json();
          if (onStatus) onStatus(body.status, body);
          const wait = Number(response.headers.get("Retry-After")) || 5;
          await new Promise(function (resolve) { setTimeout(resolve, wait * 1000); });
          continue;
        }
        if (!response.ok) throw errorFrom(response.status, await response.text());
        const disposition = response.headers.get("Content-Disposition") || "";
        const match = /filename="([^"]+)"/.exec(disposition);
        const blob = await response.blob();
        const url = URL.createObjectURL(blob);
        const link = document.createElement("a");
        link.href = url;
        link.download = match ? match[1] : "model-export";
        document.body.appendChild(link);
        link.click();
        link.remove();
        setTimeout(function () { URL.revokeObjectURL(url); }, 10000);
        return link.download;
      }
    },

    /** Multipart upload with progress (XHR: fetch cannot report upload progress). */
    upload: function (file, purpose, onProgress) {
      return new Promise(function (resolve, reject) {
        const form = new FormData();
        form.append("purpose", purpose); // before the file: the server validates as it streams
        form.append("file", file, file.name);
        const xhr = new XMLHttpRequest();
        xhr.open("POST", "/v1/files");
        const key = getKey();
        if (key) xhr.setRequestHeader("Authorization", "Bearer " + key);
        xhr.upload.onprogress = function (e) {
          if (e.lengthComputable && onProgress) onProgress(e.loaded, e.total);
        };
        xhr.onload = function () {
          if (xhr.status >= 200 && xhr.status < 300) resolve(JSON.parse(xhr.responseText));
          else reject(errorFrom(xhr.status, xhr.responseText));
        };
        xhr.onerror = function () {
          reject(new ApiError("Upload failed: the connection was lost.", 0, null));
        };
        xhr.send(form);
      });
    },

    /**
     * POST /v1/chat/completions with stream: true; calls onChunk(chunk) for each SSE data line
     * as it arrives. Resolves when the stream ends ([DONE]); `signal` aborts it.
     */
    streamChat: async function (body, onChunk, signal) {
      let response;
      try {
        response = await fetch("/v1/chat/completions", {
          method: "POST",
          headers: headers({ "Content-Type": "application/json", Accept: "text/event-stream" }),
          body: JSON.stringify(Object.assign({}, body, { stream: true })),
          signal: signal,
        });
      } catch (e) {
        if (e.name === "AbortError") return;
        throw new ApiError("Cannot reach the server: " + e.message, 0, null);
      }
      if (!response.ok) throw errorFrom(response.status, await response.text());
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      for (;;) {
        let step;
        try {
          step = await reader.read();
        } catch (e) {
          if (e.name === "AbortError") return;
          throw e;
        }
        if (step.done) break;
        buffer += decoder.decode(step.value, { stream: true });
        // SSE events end with a blank line; keep any partial event for the next read.
        let boundary;
        while ((boundary = buffer.search(/\r?\n\r?\n/)) !== -1) {
          const raw = buffer.slice(0, boundary);
          buffer = buffer.slice(boundary).replace(/^\r?\n\r?\n/, "");
          const data = raw
            .split(/\r?\n/)
            .filter(function (line) {
              return line.startsWith("data:");
            })
            .map(function (line) {
              return line.slice(5).replace(/^ /, "");
            })
            .join("\n");
          if (!data) continue;
          if (data === "[DONE]") return;
          const chunk = JSON.parse(data);
          if (chunk.error) throw new ApiError(chunk.error.message || "stream error", 0, chunk);
          onChunk(chunk);
        }
      }
    },
  };

  window.TunaApi = api;
})();
