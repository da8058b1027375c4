// The imgate web console: plain JavaScript over /api/v1, no dependencies, nothing from a CDN.
// Every value from the API is put on the page as text (textContent), never as HTML.

const TOKEN_KEY = "imgate.token";
const MASK = "***";
const REFRESH_MS = 1000;

// ---------------------------------------------------------------- the API

class ApiError extends Error {
  constructor(status, body) {
    const error = (body && body.error) || {};
    super(error.message || `HTTP ${status}`);
    this.status = status;
    this.code = error.code;
    this.details = error.details || [];
  }
}

async function api(method, path, body) {
  const headers = { Authorization: `Bearer ${sessionStorage.getItem(TOKEN_KEY) || ""}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(`/api/v1${path}`, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (response.status === 401) {
    signOut("Your token was refused; sign in again.");
    throw new ApiError(401, await response.json().catch(() => null));
  }
  if (!response.ok) throw new ApiError(response.status, await response.json().catch(() => null));
  return response.status === 204 ? null : response.json();
}

// ---------------------------------------------------------------- DOM helpers

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (value === true) el.setAttribute(key, "");
    else el.setAttribute(key, String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

const view = () => document.getElementById("view");

function render(...nodes) {
  view().replaceChildren(...nodes);
}

function flash(text, bad = false) {
  const msg = h("div", { class: bad ? "msg bad" : "msg" }, text);
  document.getElementById("flash").append(msg);
  setTimeout(() => msg.remove(), bad ? 8000 : 4000);
}

function confirmAction(message) {
  const dialog = document.getElementById("confirm");
  document.getElementById("confirm-message").textContent = message;
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
    dialog.returnValue = "";
    dialog.showModal();
  });
}

function when(iso) {
  return iso ? new Date(iso).toLocaleString() : "–";
}

function duration(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  const s = Math.floor(seconds);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
  return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
}

function ago(iso) {
  return iso ? `${duration((Date.now() - new Date(iso).getTime()) / 1000)} ago` : "–";
}

async function guarded(action, button) {
  if (button) button.disabled = true;
  try {
    return await action();
  } catch (error) {
    if (error.status !== 401) flash(error.message, true);
    return undefined;
  } finally {
    if (button) button.disabled = false;
  }
}

// ---------------------------------------------------------------- forms

// A form field; `name` is its path in the request body ("config.client_id").
function field(label, input, hint) {
  return h(
    "div",
    { class: "field" },
    h("label", { for: input.id }, label),
    h("div", {}, input, hint ? h("div", { class: "hint" }, hint) : null, h("div", { class: "field-error" })),
  );
}

function textInput(name, value, attrs = {}) {
  return h("input", { type: "text", id: `f-${name}`, name, value: value ?? "", ...attrs });
}

function select(name, options, value, attrs = {}) {
  return h(
    "select",
    { id: `f-${name}`, name, ...attrs },
    options.map(([v, label]) => h("option", { value: v, selected: String(v) === String(value ?? "") }, label)),
  );
}

function checkbox(name, checked) {
  return h("input", { type: "checkbox", id: `f-${name}`, name, checked: Boolean(checked) });
}

function clearErrors(form) {
  form.querySelectorAll(".field-error").forEach((e) => (e.textContent = ""));
  form.querySelectorAll(".invalid").forEach((e) => e.classList.remove("invalid"));
}

// Put each 422 entry under its input; what has no input is flashed.
function showErrors(form, error) {
  clearErrors(form);
  const unplaced = [];
  let first = null;
  for (const detail of error.details) {
    // A user-mapping error names the mode too ("user_mapping.ldap.url"); the input does not.
    const loc = detail.loc.replace(/^user_mapping\.[a-z]+\./, "user_mapping.");
    const input = form.querySelector(`[name="${CSS.escape(loc)}"]`);
    const slot = input && input.closest(".field") && input.closest(".field").querySelector(".field-error");
    if (slot) {
      input.classList.add("invalid");
      slot.textContent = detail.msg;
      first = first || input;
    } else unplaced.push(`${detail.loc}: ${detail.msg}`);
  }
  // A secret asked for again (its destination changed) is typed right there.
  if (first) first.focus();
  if (unplaced.length || !error.details.length) flash(unplaced.join("; ") || error.message, true);
}

const MOVES_SECRETS = "Changing it needs the secrets entered again: a stored secret is only sent where it was configured to go.";

// Inputs generated from a JSON schema (a platform config or a user-mapping mode).
function schemaFields(prefix, schema, values, secretNames, destinationNames, editing) {
  const secretsStored = editing && values && secretNames.some((name) => values[name] === MASK);
  const required = new Set(schema.required || []);
  const out = [];
  for (const [name, prop] of Object.entries(schema.properties || {})) {
    if (name === "mode") continue;
    const key = `${prefix}.${name}`;
    const plain = prop.anyOf ? prop.anyOf.find((p) => p.type !== "null") || {} : prop;
    const label = `${name.replaceAll("_", " ")}${required.has(name) ? " *" : ""}`;
    const value = values ? values[name] : undefined;
    let input;
    let hint = prop.description;
    if (secretNames.includes(name)) {
      const stored = editing && value === MASK;
      input = h("input", {
        type: "password",
        id: `f-${key}`,
        name: key,
        autocomplete: "new-password",
        placeholder: stored ? "•••••• stored — leave blank to keep" : "",
        dataset: { secret: "1" },
      });
      hint = stored ? "Leave blank to keep the stored secret; type a new one to replace it." : hint;
    } else if (plain.type === "boolean") {
      input = checkbox(key, value ?? prop.default ?? false);
    } else if (plain.type === "number" || plain.type === "integer") {
      input = h("input", { type: "number", step: "any", id: `f-${key}`, name: key, value: value ?? prop.default ?? "" });
    } else {
      input = textInput(key, value ?? prop.default ?? "");
      if (secretsStored && destinationNames.includes(name)) hint = hint ? `${hint} ${MOVES_SECRETS}` : MOVES_SECRETS;
    }
    input.dataset.kind = plain.type || "string";
    out.push(field(label, input, hint));
  }
  return out;
}

function collect(container, prefix) {
  const values = {};
  for (const input of container.querySelectorAll(`[name^="${prefix}."]`)) {
    const name = input.name.slice(prefix.length + 1);
    if (input.type === "checkbox") values[name] = input.checked;
    else if (input.value.trim() === "") continue; // blank: left out (a secret is kept)
    else if (input.dataset.kind === "number" || input.dataset.kind === "integer") values[name] = Number(input.value);
    else values[name] = input.value.trim();
  }
  return values;
}

// ---------------------------------------------------------------- login

function showLogin(message) {
  document.getElementById("top").hidden = true;
  const input = h("input", { type: "password", id: "token", name: "token", autocomplete: "current-password", required: true });
  const error = h("p", { class: "error-text", id: "login-error" }, message || "");
  const form = h(
    "form",
    { class: "card login", id: "login" },
    h("h1", {}, "Sign in to imgate"),
    field("Admin token", input, "ADMIN_TOKEN, or a token made with `imgate-admin tokens create`."),
    error,
    h("button", { type: "submit", class: "primary" }, "Sign in"),
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const token = input.value.trim();
    const response = await fetch("/api/v1/channels?limit=1", { headers: { Authorization: `Bearer ${token}` } }).catch(() => null);
    if (!response || !response.ok) {
      error.textContent = response && response.status === 401 ? "That token was refused." : "The admin API did not answer.";
      return;
    }
    sessionStorage.setItem(TOKEN_KEY, token);
    if (location.hash === "#/channels") route();
    else location.hash = "#/channels";
  });
  render(form);
  input.focus();
}

function signOut(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  stopRefresh();
  showLogin(message);
}

// ---------------------------------------------------------------- channels

let refreshTimer = null;

function stopRefresh() {
  if (refreshTimer) clearInterval(refreshTimer);
  refreshTimer = null;
}

// A coloured dot drawn by CSS (green, amber, red, grey), so it shows without an emoji font; the
// API's emoji is kept as the tooltip.
function indicator(status) {
  return h(
    "span",
    { class: "indicator", title: status.indicator, dataset: { state: status.state } },
    h("span", { class: "dot", "aria-hidden": "true" }),
    status.state,
  );
}

async function channelAction(channel, action, button) {
  if (action === "delete") {
    if (!(await confirmAction(`Delete channel "${channel.name}"? It is stopped first; its conversations are deleted too.`))) return;
    if ((await guarded(() => api("DELETE", `/channels/${channel.id}`), button)) !== undefined) flash(`Deleted ${channel.name}`);
    return refreshChannels();
  }
  const questions = {
    disable: `Disable channel "${channel.name}"? It disconnects and stays off.`,
    restart: `Restart channel "${channel.name}"? It reconnects now.`,
  };
  if (questions[action] && !(await confirmAction(questions[action]))) return;
  const result = await guarded(() => api("POST", `/channels/${channel.id}/${action}`), button);
  if (result) {
    const control = result.control;
    const answer = control && control.outcome !== "answered" ? ` (connector: ${control.outcome}${control.error ? `, ${control.error}` : ""})` : "";
    flash(`${channel.name}: ${action} sent${answer}`, Boolean(answer) && control.outcome === "refused");
  }
  return refreshChannels();
}

function channelRow(channel) {
  const s = channel.status;
  const action = (name, label, cls, off = false) =>
    h(
      "button",
      { type: "button", class: cls, disabled: off, title: off ? "Enable the channel first" : null, dataset: { action: name }, onclick: (e) => channelAction(channel, name, e.currentTarget) },
      label,
    );
  return h(
    "tr",
    { dataset: { channel: channel.name, id: channel.id } },
    h("td", {}, indicator(s)),
    h("td", {}, h("a", { href: `#/channels/${channel.id}/edit` }, channel.name), h("div", { class: "muted" }, `#${channel.id} · ${channel.platform}`)),
    h("td", {}, duration(s.uptime_s), h("div", { class: "muted" }, s.connected_at ? `since ${when(s.connected_at)}` : "")),
    h("td", { class: "num" }, s.messages_in),
    h("td", { class: "num" }, s.replies_out),
    h("td", { class: "num" }, s.reconnects),
    h("td", { class: "num" }, s.rate_limit_hits),
    h("td", {}, ago(s.last_inbound_at)),
    h("td", {}, s.last_error ? [h("span", { class: "error-text" }, s.last_error), h("div", { class: "muted" }, when(s.last_error_at))] : "–"),
    h(
      "td",
      {},
      h(
        "div",
        { class: "actions" },
        h("a", { class: "button", href: `#/channels/${channel.id}/edit` }, "Edit"),
        channel.enabled ? action("disable", "Disable") : action("enable", "Enable"),
        action("restart", "Restart", null, !channel.enabled),
        action("delete", "Delete", "danger"),
      ),
    ),
  );
}

let channelFilters = { platform: "", state: "" };

async function refreshChannels() {
  const body = document.getElementById("channel-rows");
  if (!body) return;
  const query = new URLSearchParams({ limit: "500" });
  if (channelFilters.platform) query.set("platform", channelFilters.platform);
  if (channelFilters.state) query.set("state", channelFilters.state);
  const channels = await guarded(() => api("GET", `/channels?${query}`));
  if (!channels || !document.getElementById("channel-rows")) return;
  body.replaceChildren(...channels.map(channelRow));
  if (!channels.length) body.append(h("tr", {}, h("td", { colspan: 10, class: "muted" }, "No channels yet.")));
}

async function channelsView() {
  const platforms = (await guarded(() => api("GET", "/platforms"))) || [];
  const onFilter = (key) => (event) => {
    channelFilters[key] = event.target.value;
    refreshChannels();
  };
  render(
    h("h1", {}, "Channels"),
    h(
      "div",
      { class: "toolbar" },
      h("a", { class: "button primary", href: "#/channels/new", id: "new-channel" }, "New channel"),
      h("label", {}, "Platform", select("filter-platform", [["", "all"], ...platforms.map((p) => [p.name, p.name])], channelFilters.platform, { onchange: onFilter("platform") })),
      h(
        "label",
        {},
        "State",
        select(
          "filter-state",
          [["", "all"], ["connected", "connected"], ["connecting", "connecting"], ["disconnected", "disconnected"], ["disabled", "disabled"]],
          channelFilters.state,
          { onchange: onFilter("state") },
        ),
      ),
    ),
    h(
      "table",
      { id: "channels" },
      h("thead", {}, h("tr", {}, ["State", "Channel", "Uptime", "In", "Out", "Reconnects", "Rate-limited", "Last inbound", "Last error", ""].map((t) => h("th", {}, t)))),
      h("tbody", { id: "channel-rows" }),
    ),
  );
  await refreshChannels();
  refreshTimer = setInterval(refreshChannels, REFRESH_MS);
}

async function channelForm(id) {
  const editing = id !== undefined;
  const [platforms, mappings, agents, channel] = await Promise.all([
    api("GET", "/platforms"),
    api("GET", "/user-mappings"),
    api("GET", "/agents"),
    editing ? api("GET", `/channels/${id}`) : Promise.resolve(null),
  ]);
  const configBox = h("div", { id: "config-fields" });
  const mappingBox = h("div", { id: "mapping-fields" });
  const platformSelect = select("platform", platforms.map((p) => [p.name, p.name]), channel ? channel.platform : platforms[0]?.name, { disabled: editing });
  const mappingSelect = select("user_mapping.mode", mappings.map((m) => [m.mode, m.mode]), channel ? channel.user_mapping.mode : "auto");

  const drawConfig = () => {
    const platform = platforms.find((p) => p.name === platformSelect.value);
    configBox.replaceChildren(...(platform ? schemaFields("config", platform.config_schema, channel?.config, platform.secret_fields, platform.destination_fields, editing) : []));
  };
  const drawMapping = () => {
    const mode = mappings.find((m) => m.mode === mappingSelect.value);
    const sameMode = channel && channel.user_mapping.mode === mappingSelect.value;
    mappingBox.replaceChildren(...(mode ? schemaFields("user_mapping", mode.config_schema, sameMode ? channel.user_mapping : null, mode.secret_fields, mode.destination_fields, Boolean(sameMode)) : []));
  };
  platformSelect.addEventListener("change", drawConfig);
  mappingSelect.addEventListener("change", drawMapping);
  drawConfig();
  drawMapping();

  const form = h(
    "form",
    { class: "card", id: "channel-form", novalidate: true },
    h("h1", {}, editing ? `Edit channel ${channel.name}` : "New channel"),
    field("name *", textInput("name", channel?.name, { required: true, maxlength: 100 })),
    field("platform", platformSelect),
    h("fieldset", {}, h("legend", {}, "Connection"), configBox),
    field("default agent", select("default_agent_id", [["", "— none —"], ...agents.map((a) => [a.id, `${a.name} (${a.provider}/${a.model})`])], channel?.default_agent_id)),
    field(
      "session scope",
      select("session_scope", [["conversation", "per conversation (a group shares one context)"], ["user", "per user (each group member has their own)"]], channel?.session_scope),
    ),
    field("language", textInput("language", channel?.language ?? "zh-CN"), "Language of the bot's own messages, e.g. zh-CN or en-US."),
    field("card QPS budget", h("input", { type: "number", min: 1, max: 1000, id: "f-card_qps", name: "card_qps", value: channel?.card_qps ?? 20 }), "Card API calls per second this app may make."),
    h("fieldset", {}, h("legend", {}, "User mapping"), field("mode", mappingSelect), mappingBox),
    field("enabled", checkbox("enabled", channel ? channel.enabled : true)),
    h("div", { class: "actions" }, h("button", { type: "submit", class: "primary", id: "save-channel" }, editing ? "Save" : "Create"), h("a", { class: "button", href: "#/channels" }, "Cancel")),
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const agent = form.elements.default_agent_id.value;
    const body = {
      name: form.elements.name.value.trim(),
      config: collect(configBox, "config"),
      default_agent_id: agent ? Number(agent) : null,
      session_scope: form.elements.session_scope.value,
      language: form.elements.language.value.trim(),
      card_qps: Number(form.elements.card_qps.value),
      user_mapping: { mode: mappingSelect.value, ...collect(mappingBox, "user_mapping") },
      enabled: form.elements.enabled.checked,
    };
    if (!editing) body.platform = platformSelect.value;
    const button = event.submitter;
    button.disabled = true;
    try {
      const saved = editing ? await api("PATCH", `/channels/${id}`, body) : await api("POST", "/channels", body);
      flash(`${editing ? "Saved" : "Created"} ${saved.name}`);
      location.hash = "#/channels";
    } catch (error) {
      if (error.status === 422) showErrors(form, error);
      else if (error.status !== 401) flash(error.message, true);
    } finally {
      button.disabled = false;
    }
  });
  render(form);
}

// ---------------------------------------------------------------- agents

async function agentsView() {
  const agents = await api("GET", "/agents");
  const results = h("div", { id: "agent-test-result" });
  const row = (agent) =>
    h(
      "tr",
      { dataset: { agent: agent.name } },
      h("td", {}, h("a", { href: `#/agents/${agent.id}/edit` }, agent.name), h("div", { class: "muted" }, `#${agent.id}`)),
      h("td", {}, agent.provider),
      h("td", {}, agent.model),
      h("td", {}, agent.base_url || "–"),
      h("td", {}, agent.api_key || "–"),
      h(
        "td",
        {},
        h("div", { class: "actions" }, h("button", {
          type: "button",
          dataset: { action: "test" },
          onclick: async (e) => {
            results.replaceChildren(h("p", { class: "muted" }, `Testing ${agent.name}…`));
            const result = await guarded(() => api("POST", `/agents/${agent.id}/test`, { prompt: "Say hello in one short sentence." }), e.currentTarget);
            if (!result) return results.replaceChildren();
            results.replaceChildren(
              h(
                "div",
                { class: "card" },
                h("strong", {}, `${agent.name}: ${result.result}`),
                h("p", {}, result.message),
                result.reply ? h("div", { class: "turn assistant" }, result.reply) : null,
              ),
            );
          },
        }, "Test"),
        h("a", { class: "button", href: `#/agents/${agent.id}/edit` }, "Edit"),
        h("button", {
          type: "button",
          class: "danger",
          dataset: { action: "delete" },
          onclick: async (e) => {
            if (!(await confirmAction(`Delete agent "${agent.name}"?`))) return;
            if ((await guarded(() => api("DELETE", `/agents/${agent.id}`), e.currentTarget)) !== undefined) {
              flash(`Deleted ${agent.name}`);
              agentsView();
            }
          },
        }, "Delete")),
      ),
    );
  render(
    h("h1", {}, "Agents"),
    h("div", { class: "toolbar" }, h("a", { class: "button primary", href: "#/agents/new" }, "New agent")),
    h("table", { id: "agents" }, h("thead", {}, h("tr", {}, ["Agent", "Provider", "Model", "Base URL", "API key", ""].map((t) => h("th", {}, t)))), h("tbody", {}, agents.map(row))),
    results,
  );
}

async function agentForm(id) {
  const editing = id !== undefined;
  const agent = editing ? await api("GET", `/agents/${id}`) : null;
  const number = (name, value, attrs = {}) => h("input", { type: "number", step: "any", id: `f-${name}`, name, value: value ?? "", ...attrs });
  const form = h(
    "form",
    { class: "card", id: "agent-form", novalidate: true },
    h("h1", {}, editing ? `Edit agent ${agent.name}` : "New agent"),
    field("name *", textInput("name", agent?.name)),
    field("provider", select("provider", [["local", "local (bundled llama.cpp model)"], ["openai", "openai (any OpenAI-compatible API)"]], agent?.provider ?? "local")),
    field("model", textInput("model", agent?.model), "For local agents, empty picks the bundled model."),
    field("base URL", textInput("base_url", agent?.base_url), agent?.api_key === MASK ? `e.g. https://api.openai.com/v1. ${MOVES_SECRETS}` : "e.g. https://api.openai.com/v1"),
    field(
      "API key",
      h("input", { type: "password", id: "f-api_key", name: "api_key", autocomplete: "new-password", placeholder: agent?.api_key === MASK ? "•••••• stored — leave blank to keep" : "" }),
      agent?.api_key === MASK ? "Leave blank to keep the stored key; type a new one to replace it." : null,
    ),
    field("system prompt", h("textarea", { id: "f-system_prompt", name: "system_prompt" }, agent?.system_prompt ?? "")),
    field("temperature", number("temperature", agent?.temperature, { min: 0, max: 2 })),
    field("max output tokens", number("max_output_tokens", agent?.max_output_tokens, { min: 1 })),
    field("max turns", number("max_turns", agent?.max_turns, { min: 1 })),
    field("max prompt tokens", number("max_prompt_tokens", agent?.max_prompt_tokens, { min: 1 })),
    field("timeout (s)", number("timeout_s", agent?.timeout_s, { min: 1 })),
    h("div", { class: "actions" }, h("button", { type: "submit", class: "primary" }, editing ? "Save" : "Create"), h("a", { class: "button", href: "#/agents" }, "Cancel")),
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const body = {};
    for (const name of ["name", "provider", "model", "base_url", "system_prompt"]) {
      const value = form.elements[name].value.trim();
      if (value || name === "system_prompt") body[name] = value;
      else if (editing && name === "base_url" && agent.base_url) body.base_url = null;
    }
    for (const name of ["temperature", "max_output_tokens", "max_turns", "max_prompt_tokens", "timeout_s"]) {
      if (form.elements[name].value !== "") body[name] = Number(form.elements[name].value);
    }
    const key = form.elements.api_key.value;
    if (key) body.api_key = key; // blank: the stored key is kept
    try {
      const saved = editing ? await api("PATCH", `/agents/${id}`, body) : await api("POST", "/agents", body);
      flash(`${editing ? "Saved" : "Created"} ${saved.name}`);
      location.hash = "#/agents";
    } catch (error) {
      if (error.status === 422) showErrors(form, error);
      else if (error.status !== 401) flash(error.message, true);
    }
  });
  render(form);
}

// ---------------------------------------------------------------- users

async function usersView() {
  const params = new URLSearchParams(location.hash.split("?")[1] || "");
  const q = params.get("q") || "";
  const users = await api("GET", `/users?limit=200${q ? `&q=${encodeURIComponent(q)}` : ""}`);
  const search = textInput("q", q, { placeholder: "name, e-mail, IM user id…" });
  const newUser = h(
    "form",
    { class: "card", id: "user-form" },
    h("h2", {}, "New user"),
    field("username *", textInput("username", "")),
    field("e-mail", textInput("email", "")),
    field("display name", textInput("display_name", "")),
    h("button", { type: "submit" }, "Create user"),
  );
  newUser.addEventListener("submit", async (event) => {
    event.preventDefault();
    const body = { username: newUser.elements.username.value.trim() };
    for (const name of ["email", "display_name"]) if (newUser.elements[name].value.trim()) body[name] = newUser.elements[name].value.trim();
    try {
      const user = await api("POST", "/users", body);
      location.hash = `#/users/${user.id}`;
    } catch (error) {
      if (error.status === 422) showErrors(newUser, error);
      else if (error.status !== 401) flash(error.message, true);
    }
  });
  render(
    h("h1", {}, "Users"),
    h(
      "form",
      { class: "toolbar", onsubmit: (e) => { e.preventDefault(); location.hash = `#/users?q=${encodeURIComponent(search.value)}`; } },
      search,
      h("button", { type: "submit" }, "Search"),
    ),
    h(
      "table",
      { id: "users" },
      h("thead", {}, h("tr", {}, ["User", "Name", "E-mail", "Source", "IM identities"].map((t) => h("th", {}, t)))),
      h(
        "tbody",
        {},
        users.map((u) =>
          h(
            "tr",
            {},
            h("td", {}, h("a", { href: `#/users/${u.id}` }, u.username)),
            h("td", {}, u.display_name || "–"),
            h("td", {}, u.email || "–"),
            h("td", {}, u.auth_source),
            h("td", {}, u.identities.map((i) => `${i.platform}:${i.platform_user_id}`).join(", ") || "–"),
          ),
        ),
      ),
    ),
    newUser,
  );
}

async function userView(id) {
  const [user, platforms] = await Promise.all([api("GET", `/users/${id}`), api("GET", "/platforms")]);
  const link = h(
    "form",
    { class: "card", id: "link-form" },
    h("h2", {}, "Link an IM identity"),
    field("platform *", select("platform", platforms.map((p) => [p.name, p.name]), platforms[0]?.name)),
    field("tenant (organisation id)", textInput("tenant_id", "")),
    field("platform user id *", textInput("platform_user_id", "")),
    field("nick", textInput("nick", "")),
    h("button", { type: "submit" }, "Link"),
  );
  link.addEventListener("submit", async (event) => {
    event.preventDefault();
    const body = { platform: link.elements.platform.value.trim(), tenant_id: link.elements.tenant_id.value.trim(), platform_user_id: link.elements.platform_user_id.value.trim() };
    if (link.elements.nick.value.trim()) body.nick = link.elements.nick.value.trim();
    try {
      await api("POST", `/users/${id}/identities`, body);
      flash("Identity linked");
      userView(id);
    } catch (error) {
      if (error.status === 422) showErrors(link, error);
      else if (error.status !== 401) flash(error.message, true);
    }
  });
  render(
    h("h1", {}, `User ${user.username}`),
    h("div", { class: "card" }, h("p", {}, `${user.display_name || ""} ${user.email ? `<${user.email}>` : ""}`), h("p", { class: "muted" }, `#${user.id} · ${user.auth_source} · since ${when(user.created_at)}`), h("a", { href: `#/conversations?user_id=${user.id}` }, "Conversations")),
    h("h2", {}, "IM identities"),
    h(
      "table",
      { id: "identities" },
      h("thead", {}, h("tr", {}, ["Platform", "Tenant", "User id", "Nick", ""].map((t) => h("th", {}, t)))),
      h(
        "tbody",
        {},
        user.identities.map((i) =>
          h(
            "tr",
            {},
            h("td", {}, i.platform),
            h("td", {}, i.tenant_id || "–"),
            h("td", {}, i.platform_user_id),
            h("td", {}, i.nick || "–"),
            h("td", {}, h("button", {
              type: "button",
              class: "danger",
              onclick: async (e) => {
                if (!(await confirmAction(`Unlink ${i.platform}:${i.platform_user_id} from ${user.username}?`))) return;
                if ((await guarded(() => api("DELETE", `/users/${id}/identities/${i.id}`), e.currentTarget)) !== undefined) userView(id);
              },
            }, "Unlink")),
          ),
        ),
      ),
    ),
    link,
  );
}

// ---------------------------------------------------------------- conversations

async function conversationsView() {
  const params = new URLSearchParams(location.hash.split("?")[1] || "");
  params.set("limit", "200");
  const conversations = await api("GET", `/conversations?${params}`);
  const filter = h(
    "form",
    { class: "toolbar" },
    h("label", {}, "Channel id", textInput("channel_id", params.get("channel_id") || "")),
    h("label", {}, "User id", textInput("user_id", params.get("user_id") || "")),
    h("label", {}, "Open", select("open", [["", "all"], ["true", "open"], ["false", "closed"]], params.get("open") || "")),
    h("button", { type: "submit" }, "Filter"),
  );
  filter.addEventListener("submit", (event) => {
    event.preventDefault();
    const next = new URLSearchParams();
    for (const name of ["channel_id", "user_id", "open"]) if (filter.elements[name].value) next.set(name, filter.elements[name].value);
    location.hash = `#/conversations?${next}`;
  });
  render(
    h("h1", {}, "Conversations"),
    filter,
    h(
      "table",
      { id: "conversations" },
      h("thead", {}, h("tr", {}, ["Conversation", "Channel", "User", "Messages", "Last activity", "Closed"].map((t) => h("th", {}, t)))),
      h(
        "tbody",
        {},
        conversations.map((c) =>
          h(
            "tr",
            {},
            h("td", {}, h("a", { href: `#/conversations/${c.id}` }, c.id.slice(0, 8)), h("div", { class: "muted" }, c.scope_key)),
            h("td", {}, c.channel_id),
            h("td", {}, c.user_id ? h("a", { href: `#/users/${c.user_id}` }, c.user_id) : "–"),
            h("td", { class: "num" }, c.message_count),
            h("td", {}, when(c.last_activity_at)),
            h("td", {}, c.closed_at ? when(c.closed_at) : "open"),
          ),
        ),
      ),
    ),
  );
}

async function conversationView(id) {
  const c = await api("GET", `/conversations/${encodeURIComponent(id)}`);
  render(
    h("h1", {}, `Conversation ${c.id.slice(0, 8)}`),
    h(
      "div",
      { class: "toolbar" },
      h("span", { class: "muted" }, `channel ${c.channel_id} · ${c.scope_key} · ${c.closed_at ? `closed ${when(c.closed_at)}` : "open"}`),
      c.closed_at
        ? null
        : h("button", {
            type: "button",
            class: "danger",
            onclick: async (e) => {
              if (!(await confirmAction("Close this conversation? The user's next message starts a fresh context."))) return;
              if (await guarded(() => api("POST", `/conversations/${encodeURIComponent(id)}/close`), e.currentTarget)) conversationView(id);
            },
          }, "Close"),
    ),
    h(
      "div",
      { class: "transcript" },
      c.messages.length
        ? c.messages.map((m) => h("div", { class: `turn ${m.role}` }, h("div", { class: "muted" }, `${m.role} · ${when(m.created_at)}${m.duration_ms ? ` · ${m.duration_ms} ms` : ""}`), m.content))
        : h("p", { class: "muted" }, "No messages."),
    ),
  );
}

// ---------------------------------------------------------------- tokens and audit

async function tokensView() {
  const tokens = await api("GET", "/tokens");
  const created = h("div", { id: "created-token" });
  const form = h("form", { class: "toolbar" }, h("label", {}, "Name", textInput("name", "", { required: true })), h("button", { type: "submit", class: "primary" }, "Create token"));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const token = await guarded(() => api("POST", "/tokens", { name: form.elements.name.value.trim() }));
    if (!token) return;
    await tokensView();
    document.getElementById("created-token").replaceChildren(h("div", { class: "card" }, h("p", {}, `Token "${token.name}" — copy it now, it is not shown again:`), h("div", { class: "token-once" }, token.token)));
  });
  render(
    h("h1", {}, "API tokens"),
    form,
    created,
    h(
      "table",
      { id: "tokens" },
      h("thead", {}, h("tr", {}, ["Name", "Prefix", "Created", "By", "Revoked", ""].map((t) => h("th", {}, t)))),
      h(
        "tbody",
        {},
        tokens.map((t) =>
          h(
            "tr",
            {},
            h("td", {}, t.name),
            h("td", {}, `${t.prefix}…`),
            h("td", {}, when(t.created_at)),
            h("td", {}, t.created_by),
            h("td", {}, t.revoked_at ? when(t.revoked_at) : "–"),
            h("td", {}, t.revoked_at ? null : h("button", {
              type: "button",
              class: "danger",
              onclick: async (e) => {
                if (!(await confirmAction(`Revoke token "${t.name}"? Requests carrying it are refused from now on.`))) return;
                if ((await guarded(() => api("DELETE", `/tokens/${t.id}`), e.currentTarget)) !== undefined) tokensView();
              },
            }, "Revoke")),
          ),
        ),
      ),
    ),
  );
}

async function auditView() {
  const entries = await api("GET", "/audit?limit=200");
  render(
    h("h1", {}, "Audit log"),
    h(
      "table",
      { id: "audit" },
      h("thead", {}, h("tr", {}, ["When", "Who", "What", "Target", "Detail"].map((t) => h("th", {}, t)))),
      h("tbody", {}, entries.map((e) => h("tr", {}, h("td", {}, when(e.at)), h("td", {}, e.actor), h("td", {}, e.action), h("td", {}, e.target), h("td", { class: "muted" }, JSON.stringify(e.detail))))),
    ),
  );
}

// ---------------------------------------------------------------- dead letters

async function deadLettersView() {
  const letters = await api("GET", "/dead-letters?limit=200");
  const act = (d, label, done, danger, question, call) =>
    h("button", {
      type: "button",
      class: danger ? "danger" : undefined,
      onclick: async (e) => {
        if (!(await confirmAction(question))) return;
        if ((await guarded(call, e.currentTarget)) !== undefined) {
          flash(`Message ${d.seq} ${done}.`);
          deadLettersView();
        }
      },
    }, label);
  render(
    h("h1", {}, "Dead letters"),
    h("p", { class: "muted" }, "Messages the services gave up on: the user was told, the reason is below. Fix the cause (a channel's user mapping, an agent's key), then replay: it is processed again as a new attempt, and the user gets a new answer below the failure they saw (at most 5 replays per message)."),
    letters.length === 0
      ? h("p", { id: "no-dead-letters" }, "No dead letters.")
      : h(
          "table",
          { id: "dead-letters" },
          h("thead", {}, h("tr", {}, ["Failed", "Channel", "Where", "Why", "Message", ""].map((t) => h("th", {}, t)))),
          h(
            "tbody",
            {},
            letters.map((d) =>
              h(
                "tr",
                { dataset: { seq: d.seq } },
                h("td", {}, when(d.failed_at)),
                h("td", {}, d.channel_id ?? "–"),
                h("td", {}, d.consumer, h("div", { class: "muted" }, `${d.deliveries} tries`)),
                h("td", {}, h("strong", {}, d.permanent ? d.category : `${d.category} (still failing after retries)`), h("div", {}, d.reason)),
                h("td", { class: "muted" }, d.body),
                h(
                  "td",
                  {},
                  act(d, "Replay", "replayed", false, `Process message ${d.seq} again? It goes back to ${d.subject}; the user gets a new answer.`, () => api("POST", `/dead-letters/${d.seq}/replay`)),
                  act(d, "Discard", "discarded", true, `Discard message ${d.seq} for good?`, () => api("DELETE", `/dead-letters/${d.seq}`)),
                ),
              ),
            ),
          ),
        ),
  );
}

// ---------------------------------------------------------------- routing

const ROUTES = [
  [/^#\/channels$/, () => channelsView(), "channels"],
  [/^#\/channels\/new$/, () => channelForm(), "channels"],
  [/^#\/channels\/(\d+)\/edit$/, (m) => channelForm(Number(m[1])), "channels"],
  [/^#\/agents$/, () => agentsView(), "agents"],
  [/^#\/agents\/new$/, () => agentForm(), "agents"],
  [/^#\/agents\/(\d+)\/edit$/, (m) => agentForm(Number(m[1])), "agents"],
  [/^#\/users(\?.*)?$/, () => usersView(), "users"],
  [/^#\/users\/(\d+)$/, (m) => userView(Number(m[1])), "users"],
  [/^#\/conversations(\?.*)?$/, () => conversationsView(), "conversations"],
  [/^#\/conversations\/([^?/]+)$/, (m) => conversationView(decodeURIComponent(m[1])), "conversations"],
  [/^#\/tokens$/, () => tokensView(), "tokens"],
  [/^#\/audit$/, () => auditView(), "audit"],
  [/^#\/dead-letters$/, () => deadLettersView(), "dead-letters"],
];

async function route() {
  stopRefresh();
  if (!sessionStorage.getItem(TOKEN_KEY)) return showLogin();
  document.getElementById("top").hidden = false;
  const hash = location.hash || "#/channels";
  for (const [pattern, show, section] of ROUTES) {
    const match = hash.match(pattern);
    if (!match) continue;
    document.querySelectorAll("[data-nav]").forEach((a) => a.classList.toggle("active", a.dataset.nav === section));
    try {
      await show(match);
    } catch (error) {
      if (error.status !== 401) render(h("p", { class: "error-text" }, error.message));
    }
    return;
  }
  location.hash = "#/channels";
}

window.addEventListener("hashchange", route);
document.getElementById("sign-out").addEventListener("click", () => signOut());
route();
