// The console page: a session of the grf-stream protocol over the console's WebSocket relay.
// Every binary WebSocket message is one msgpack protocol message (grf_stream/serving/protocol.py).

import { decode, encode } from "./msgpack.js";
import { COLOURS, Plot } from "./plot.js";

const PROTOCOL = 1;
const FRAME_RATE = 30;  // the video features are one row per frame, trained at 30 frames a second
const SAMPLE_RATE = 16000;
const WINDOW_S = 1.0;  // a prediction after every second of audio and of video, as the terminal client
const JPEG_QUALITY = 0.85;
const MAX_BUFFERED = 1 << 20;  // bytes queued in the WebSocket beyond which frames are skipped, not queued
const WELCOME_WAIT_MS = 5000;
const PLAIN_NAMES = { text: "words", audio: "voice", video: "face" };

const $ = (id) => document.getElementById(id);
const plot = new Plot($("plot"));
// What the page received, for whoever watches it (the browser test reads it too).
const state = { welcome: null, predictions: [], errors: [], closed: null, server: null, firstPredictionS: null,
                skippedFrames: 0 };
window.grfConsole = { state, plot };
let live = null;  // the running session: socket, session id, seq, capture, timers

$("start").onclick = () => start().catch((error) => fail(`could not start: ${error.message}`));
$("stop").onclick = () => stop();
$("phrase-form").onsubmit = (event) => {
  event.preventDefault();
  sendPhrase($("phrase").value.trim());
  $("phrase").value = "";
};
plot.draw();

async function start() {
  const clicked = performance.now();  // the first prediction is timed from here
  reset();
  $("start").disabled = true;
  const socket = await connect();
  live = { socket, session: `console-${Math.random().toString(16).slice(2, 10)}`, seq: 0, timers: [],
           stream: null, audio: null, started: clicked };
  $("stop").disabled = false;
  const stream = await capture();
  live.stream = stream;
  const modalities = [];
  if (stream && stream.getVideoTracks().length) modalities.push("video");
  if (stream && stream.getAudioTracks().length) modalities.push("audio");
  modalities.push("text");
  send("hello", { modalities, window: "window", sample_rate: SAMPLE_RATE, window_s: WINDOW_S, carry_context: false });
  await Promise.all([modalities.includes("video") && streamFrames(stream),
                     modalities.includes("audio") && streamMicrophone(stream)]);
  live.timers.push(setInterval(() => send("stats"), 1000));
  const session = live.session;
  setTimeout(() => {
    if (live && live.session === session && !state.welcome) {
      fail("no answer from the server: is `python -m grf_stream.serve` running, at the address the console was "
           + "started with (--server)?");
    }
  }, WELCOME_WAIT_MS);
}

function reset() {
  Object.assign(state, { welcome: null, predictions: [], errors: [], closed: null, firstPredictionS: null,
                         skippedFrames: 0 });
  plot.clear();
  for (const id of ["phrases", "errors"]) $(id).replaceChildren();
  $("value").textContent = "–";
  $("rests-on").textContent = "";
  show("steps", 0); show("session-errors", 0); show("skipped", 0);
}

function connect() {
  return new Promise((resolve, reject) => {
    const socket = new WebSocket(`ws://${location.host}/ws`);
    socket.binaryType = "arraybuffer";
    socket.onopen = () => resolve(socket);
    socket.onerror = () => reject(new Error("the console's WebSocket did not open: is the console still running?"));
    socket.onmessage = (event) => receive(decode(event.data));
    socket.onclose = () => {
      if (live && live.socket === socket) fail("the console closed the connection");
    };
  });
}

async function capture() {
  const wanted = {
    video: $("use-camera").checked && { width: { ideal: 640 }, height: { ideal: 480 }, frameRate: { ideal: FRAME_RATE } },
    audio: $("use-mic").checked && { channelCount: 1, echoCancellation: true, noiseSuppression: true },
  };
  if (!wanted.video && !wanted.audio) return null;
  if (!navigator.mediaDevices) {
    note("the browser gives a camera and a microphone only to https pages or to http://127.0.0.1 and "
         + "http://localhost: open the console there (typed phrases still work)");
    return null;
  }
  try {
    return await navigator.mediaDevices.getUserMedia(wanted);
  } catch (error) {  // one device missing or refused: take what there is
    const tracks = [];
    for (const kind of ["video", "audio"]) {
      if (!wanted[kind]) continue;
      try {
        tracks.push(...(await navigator.mediaDevices.getUserMedia({ [kind]: wanted[kind] })).getTracks());
      } catch (kindError) {
        note(`no ${kind === "video" ? "camera" : "microphone"}: ${kindError.name} ${kindError.message}`);
      }
    }
    return tracks.length ? new MediaStream(tracks) : null;
  }
}

async function streamFrames(stream) {
  const preview = $("preview");
  preview.srcObject = stream;
  await preview.play();
  const canvas = document.createElement("canvas");
  let encoding = false;
  live.timers.push(setInterval(() => {
    if (encoding || !preview.videoWidth) return;
    if (live.socket.bufferedAmount > MAX_BUFFERED) {  // the link is behind: a newer frame will do
      show("skipped", ++state.skippedFrames);
      return;
    }
    encoding = true;
    canvas.width = preview.videoWidth;
    canvas.height = preview.videoHeight;
    canvas.getContext("2d").drawImage(preview, 0, 0);
    canvas.toBlob(async (blob) => {
      encoding = false;
      if (blob) send("video", { jpeg: new Uint8Array(await blob.arrayBuffer()) });
    }, "image/jpeg", JPEG_QUALITY);
  }, 1000 / FRAME_RATE));
}

async function streamMicrophone(stream) {
  let audio = new AudioContext({ sampleRate: SAMPLE_RATE });
  let source;
  try {
    source = audio.createMediaStreamSource(stream);
  } catch (error) {  // Firefox: a microphone at another rate cannot feed a 16 kHz context; the worklet resamples
    audio.close();
    audio = new AudioContext();
    source = audio.createMediaStreamSource(stream);
  }
  live.audio = audio;
  await audio.audioWorklet.addModule("/page/pcm16-worklet.js");
  const chunker = new AudioWorkletNode(audio, "pcm16-chunker");
  chunker.port.onmessage = (event) => send("audio", { pcm: new Uint8Array(event.data), sample_rate: SAMPLE_RATE });
  source.connect(chunker);
  chunker.connect(audio.destination);  // silent, but a node nobody listens to may never be run
  await audio.resume();
}

function send(type, fields = {}) {
  if (!live || live.socket.readyState !== WebSocket.OPEN) return;
  live.socket.send(encode({ v: PROTOCOL, type, session: live.session, seq: live.seq++, ts: Date.now() / 1000,
                            ...fields }));
}

function sendPhrase(text) {
  if (!text) return;
  if (!live) {
    note("press start first: a phrase belongs to a running session");
    return;
  }
  send("text", { text, final: true });
  const item = document.createElement("li");
  item.textContent = text;
  $("phrases").append(item);
}

function stop() {
  if (!live) return;
  send("bye");  // the server answers with closed and the session's counts
  const { socket, timers, stream, audio } = live;
  timers.forEach(clearInterval);
  if (stream) stream.getTracks().forEach((track) => track.stop());
  if (audio) audio.close();
  $("preview").srcObject = null;
  live = null;
  setTimeout(() => socket.close(), 3000);
  $("start").disabled = false;
  $("stop").disabled = true;
}

function receive(reply) {
  if (reply.type === "welcome") {
    state.welcome = reply;
    status(`streaming as ${reply.session}: the server fuses ${reply.modalities.join(", ")}`);
  } else if (reply.type === "prediction") {
    showPrediction(reply);
  } else if (reply.type === "error") {
    showError(reply);
  } else if (reply.type === "server_stats") {
    showServer(reply.numbers);
  } else if (reply.type === "closed") {
    state.closed = reply;
    status(`closed (${reply.reason}): ${Object.entries(reply.stats).map(([k, v]) => `${k} ${v}`).join(", ")}`);
  }
}

function showPrediction(reply) {
  const t = (performance.now() - (live ? live.started : 0)) / 1000;
  if (state.firstPredictionS === null) state.firstPredictionS = t;
  state.predictions.push({ ...reply, t });
  plot.add({ t, value: reply.value, gate: reply.gate, modality: reply.modality });
  $("value").textContent = `${reply.value >= 0 ? "+" : ""}${reply.value.toFixed(2)}`;
  $("value").style.color = COLOURS[reply.modality] || "";
  $("rests-on").textContent = `after ${reply.modality}; rests on ${restsOn(reply.modalities)}`;
  $("held").replaceChildren(...reply.modalities.map((m) => chip(m)));
  show("steps", state.predictions.length);
  show("latency", `${reply.latency_ms.toFixed(1)} ms`);
}

// What a prediction rests on, as the terminal client says it: "voice + face; no words yet".
function restsOn(fused) {
  const held = fused.map((m) => PLAIN_NAMES[m] || m).join(" + ") || "nothing";
  const sent = state.welcome ? state.welcome.modalities : [];
  const missing = sent.filter((m) => !fused.includes(m)).map((m) => `no ${PLAIN_NAMES[m] || m} yet`);
  return [held, ...missing].join("; ");
}

function chip(modality) {
  const span = document.createElement("span");
  span.className = "chip";
  span.style.background = COLOURS[modality] || "#868e96";
  span.textContent = modality;
  return span;
}

function showError(reply) {
  state.errors.push(reply);
  show("session-errors", state.errors.length);
  note(`error ${reply.code}${reply.seq === null ? "" : ` (seq ${reply.seq})`}: ${reply.message}`);
}

function showServer(numbers) {
  state.server = numbers;
  show("server-sessions", numbers.active_sessions);
  show("server-rate", numbers.steps_per_s.toFixed(1));
  show("server-errors", numbers.errors);
  show("server-drops", numbers.drops);
}

function note(text) {
  const item = document.createElement("li");
  item.textContent = text;
  $("errors").append(item);
  item.scrollIntoView({ block: "nearest" });
}

function fail(text) {
  note(text);
  status("stopped");
  stop();
  $("start").disabled = false;
}

function status(text) {
  $("status").textContent = text;
}

function show(id, value) {
  $(id).textContent = String(value);
}
