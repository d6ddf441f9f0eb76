// The demo chat: one Gateway, one subscription per joined room, the
// connection state, a presence count, and notices for `resync` and errors.
// Query parameters fill the form (?url=&token=&name=&room=&connect=1).
import { Gateway } from "../../clients/js/dist/index.js";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
for (const key of ["url", "token", "name"]) if (params.get(key)) $(key).value = params.get(key);

let gw = null;
const rooms = new Map(); // room -> { sub, messages: [] }
let current = null;

function setState(s) {
  $("state").textContent = s;
  $("state").dataset.state = s;
}

function notice(text) {
  $("notice").textContent = text;
}

function render() {
  $("rooms").replaceChildren(
    ...[...rooms.keys()].map((room) => {
      const li = document.createElement("li");
      li.className = room === current ? "current" : "";
      const b = document.createElement("button");
      b.type = "button";
      b.textContent = "#" + room;
      b.onclick = () => show(room);
      li.append(b);
      return li;
    }),
  );
  $("room-name").textContent = current ?? "-";
  const list = current ? rooms.get(current).messages : [];
  $("messages").replaceChildren(
    ...list.map((m) => {
      const li = document.createElement("li");
      if (m.note) {
        li.className = "note";
        li.textContent = m.note;
      } else {
        const who = document.createElement("span");
        who.className = "who";
        who.textContent = m.from ?? "?";
        li.append(who, document.createTextNode(String(m.text ?? JSON.stringify(m))));
        li.dataset.offset = m.offset ?? "";
      }
      return li;
    }),
  );
  $("messages").scrollTop = $("messages").scrollHeight;
}

async function refreshPresence() {
  if (!gw || !current || gw.currentState !== "connected") return;
  try {
    const p = await gw.presence(current);
    $("presence").textContent = `${p.users} online`;
  } catch (e) {
    $("presence").textContent = `presence: ${e.code}`;
  }
}

function join(room) {
  if (!gw || rooms.has(room)) return show(room);
  const entry = { messages: [] };
  entry.sub = gw.subscribe(room, (data, { offset }) => {
    entry.messages.push({ ...(typeof data === "object" && data ? data : { text: data }), offset });
    if (room === current) render();
  });
  entry.sub.ready.then(refreshPresence, (e) => {
    notice(`#${room}: ${e.code}`);
    rooms.delete(room);
    render();
  });
  rooms.set(room, entry);
  show(room);
}

function show(room) {
  current = room;
  render();
  refreshPresence();
}

function connect() {
  gw?.close();
  rooms.clear();
  const token = $("token").value.trim();
  gw = new Gateway($("url").value.trim(), { token: () => Promise.resolve(token) });
  gw.on("state", (s) => {
    setState(s);
    if (s === "connected") refreshPresence();
  });
  gw.on("error", (e) => notice(`error: ${e.code} ${e.message}`));
  gw.on("resync", ({ channel }) => {
    const room = channel.replace(/^room:/, "");
    rooms.get(room)?.messages.push({ note: "some messages may be missing (continuity lost): reload the history from your backend" });
    render();
  });
  for (const room of (params.get("room") ?? "lobby").split(",")) join(room);
}

$("connect").onsubmit = (e) => {
  e.preventDefault();
  connect();
};
$("add-room").onsubmit = (e) => {
  e.preventDefault();
  const room = $("new-room").value.trim();
  if (room) join(room);
  $("new-room").value = "";
};
$("send").onsubmit = async (e) => {
  e.preventDefault();
  const text = $("text").value;
  if (!text || !current || !gw) return;
  try {
    await gw.publish(current, { from: $("name").value, text });
    $("text").value = "";
    notice("");
  } catch (err) {
    notice(`not sent: ${err.code}`); // "offline" while disconnected: nothing is queued behind your back
  }
};
setInterval(refreshPresence, 5000);
if (params.get("connect") === "1") connect();
